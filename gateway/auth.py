"""End-user authentication at the WebSocket handshake.

The token comes from ``Authorization: Bearer <JWT>`` or, for browsers that
cannot set headers, from a ``Sec-WebSocket-Protocol`` entry ``bearer.<JWT>``
(clients of the platform Runwire replaces also send ``jwt.<JWT>`` or
``jwt-auth.<JWT>``, the token raw or base64url-encoded without padding).
It is verified against a pinned algorithm list (``none`` can never be on it),
``exp`` is required, and ``aud`` / ``iss`` are checked when configured. The
key is chosen by algorithm family, so an HMAC token can never be checked with
the RSA public key (the classic key-confusion attack).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import jwt

from gateway.settings import HMAC_ALGORITHMS, GatewaySettings
from runwire_common.context import id_problem

SUBPROTOCOL = "runwire.v1"
MAX_ROLES = 64
# A token shorter than this is a placeholder ("null", "undefined" …): treated as missing.
MIN_TOKEN_CHARS = 10
# Subprotocol entries that carry a token: (prefix, the subprotocol the server selects for it,
# whether the entry marks a client of the previous platform). ``jwt-auth.`` before ``jwt.``.
TOKEN_ENTRIES: tuple[tuple[str, str, bool], ...] = (
    ("jwt-auth.", "jwt-auth", True),
    ("jwt.", "jwt-auth", True),
    ("bearer.", "bearer", False),
)
# Plain entries (no token) that name the previous platform's subprotocol.
JWT_AUTH_NAMES = frozenset({"jwt-auth", "jwt"})


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


@dataclass(frozen=True, slots=True)
class Credentials:
    """The token a handshake offered, and where it came from."""

    token: str | None
    # Taken from a ``jwt.``/``jwt-auth.`` entry: the client speaks the previous platform's protocol.
    from_jwt_entry: bool = False


def extract_credentials(authorization: str | None, subprotocols: Iterable[str]) -> Credentials:
    """The token: the ``Authorization`` header first, else the first subprotocol entry with one.

    A token shorter than :data:`MIN_TOKEN_CHARS` counts as missing, wherever it
    came from, and the next source is tried.
    """
    if authorization:
        scheme, _, value = authorization.strip().partition(" ")
        if scheme.lower() == "bearer" and len(value.strip()) >= MIN_TOKEN_CHARS:
            return Credentials(value.strip())
    for entry in subprotocols:
        lowered = entry.lower()
        for prefix, _, from_jwt in TOKEN_ENTRIES:
            if lowered.startswith(prefix):
                token = decode_token(entry[len(prefix) :])
                if len(token) >= MIN_TOKEN_CHARS:
                    return Credentials(token, from_jwt_entry=from_jwt)
                break
    return Credentials(None)


def decode_token(value: str) -> str:
    """A subprotocol entry's token: a raw JWT as it is, a base64url-encoded one decoded.

    A JWT always holds two dots and base64url never does, which tells them apart.
    What is neither is returned as it is, for the verifier to refuse.
    """
    if "." in value or not value:
        return value
    try:
        decoded = base64.b64decode(value + "=" * (-len(value) % 4), altchars=b"-_", validate=True)
        text = decoded.decode("ascii")
    except (binascii.Error, ValueError):
        return value
    return text if text.count(".") == 2 else value


def selected_subprotocol(offered: Sequence[str]) -> str | None:
    """The subprotocol the server selects among ``offered``.

    ``runwire.v1`` when offered; otherwise, for the previous platform's clients,
    ``jwt-auth`` for a ``jwt.``/``jwt-auth.`` entry (or a plain ``jwt-auth`` or
    ``jwt``) and ``bearer`` for a ``bearer.`` entry, the first such entry
    deciding. A token-carrying entry is never echoed.
    """
    if SUBPROTOCOL in offered:
        return SUBPROTOCOL
    for entry in offered:
        lowered = entry.lower()
        if lowered in JWT_AUTH_NAMES:
            return "jwt-auth"
        for prefix, selected, _ in TOKEN_ENTRIES:
            if lowered.startswith(prefix):
                return selected
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
