"""End-user authentication at the WebSocket handshake.

The token comes from ``Authorization: Bearer <JWT>`` or, for browsers that
cannot set headers, from a ``Sec-WebSocket-Protocol`` entry ``bearer.<JWT>``.
It is verified against a pinned algorithm list (``none`` can never be on it),
``exp`` is required, and ``aud`` / ``iss`` are checked when configured. The
key is chosen by algorithm family, so an HMAC token can never be checked with
the RSA public key (the classic key-confusion attack).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import jwt

from gateway.settings import HMAC_ALGORITHMS, GatewaySettings
from runwire_common.context import id_problem

BEARER_PREFIX = "bearer."
SUBPROTOCOL = "runwire.v1"
MAX_ROLES = 64


class AuthError(Exception):
    """The token is missing or not acceptable; ``reason`` is safe to show."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a connection is, as proven by its token."""

    user_id: str
    tenant_id: str
    roles: tuple[str, ...]
    expires_at: float  # POSIX seconds (the token's ``exp``)


def offered_subprotocols(header_values: Iterable[str]) -> list[str]:
    """The ``Sec-WebSocket-Protocol`` entries, in order, from every header line."""
    return [item.strip() for value in header_values for item in value.split(",") if item.strip()]


def extract_token(authorization: str | None, subprotocols: Iterable[str]) -> str | None:
    """The bearer token: the ``Authorization`` header first, else a ``bearer.`` subprotocol."""
    if authorization:
        scheme, _, credentials = authorization.strip().partition(" ")
        if scheme.lower() == "bearer" and credentials.strip():
            return credentials.strip()
        return None
    for entry in subprotocols:
        if entry.lower().startswith(BEARER_PREFIX) and len(entry) > len(BEARER_PREFIX):
            return entry[len(BEARER_PREFIX) :]
    return None


class TokenVerifier:
    """Verifies end-user JWTs with the configured keys and claims."""

    def __init__(self, settings: GatewaySettings) -> None:
        self._algorithms = tuple(settings.jwt_algorithms)
        self._secret = settings.jwt_secret.get_secret_value() if settings.jwt_secret else None
        self._public_key = settings.jwt_public_key
        self._audience = settings.jwt_audience
        self._issuer = settings.jwt_issuer
        self._leeway = settings.jwt_leeway_s

    def verify(self, token: str | None) -> Identity:
        """Return the token's identity or raise :class:`AuthError` with a short reason."""
        if not token:
            raise AuthError("missing bearer token")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise AuthError("malformed token") from exc
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self._algorithms:
            raise AuthError("token algorithm not allowed")
        key = self._secret if alg in HMAC_ALGORITHMS else self._public_key
        if key is None:  # pragma: no cover - settings validation guarantees a key
            raise AuthError("token algorithm not allowed")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                options={
                    "require": ["exp", "sub"],
                    "verify_aud": self._audience is not None,
                    "verify_iss": self._issuer is not None,
                },
            )
        except jwt.ExpiredSignatureError as exc:
            raise AuthError("token expired") from exc
        except jwt.InvalidAudienceError as exc:
            raise AuthError("token audience not accepted") from exc
        except jwt.InvalidIssuerError as exc:
            raise AuthError("token issuer not accepted") from exc
        except jwt.MissingRequiredClaimError as exc:
            raise AuthError(f"token lacks the {exc.claim!r} claim") from exc
        except jwt.InvalidSignatureError as exc:
            raise AuthError("token signature is invalid") from exc
        except jwt.PyJWTError as exc:
            raise AuthError("token is invalid") from exc
        return identity_from_claims(claims)


def identity_from_claims(claims: dict[str, Any]) -> Identity:
    sub = claims.get("sub")
    if not isinstance(sub, str) or id_problem(sub) is not None:
        raise AuthError("token subject is not a valid user id")
    tenant = claims.get("tenant_id", "")
    if tenant is None:
        tenant = ""
    if not isinstance(tenant, str) or (tenant and id_problem(tenant) is not None):
        raise AuthError("token tenant_id is not a valid id")
    roles = claims.get("roles", [])
    if roles is None:
        roles = []
    if (
        not isinstance(roles, list)
        or len(roles) > MAX_ROLES
        or not all(isinstance(role, str) and role.strip() for role in roles)
    ):
        raise AuthError("token roles must be a list of strings")
    exp = claims["exp"]
    if isinstance(exp, bool) or not isinstance(exp, int | float):  # pragma: no cover - PyJWT checks
        raise AuthError("token exp is invalid")
    return Identity(user_id=sub, tenant_id=tenant, roles=tuple(roles), expires_at=float(exp))
