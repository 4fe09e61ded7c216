"""Development sign-in: short-lived tokens for any user name, signed with the gateway's own secret.

Only built when the gateway runs with ``RUNWIRE_GATEWAY_DEV_TOKENS=true`` (``runwire up``
sets it with its generated development secrets; nothing else does, and it is off by
default and in the Kubernetes manifests). The tokens are exactly what the gateway's
:class:`~gateway.auth.TokenVerifier` accepts: ``sub``, ``iat``, ``exp`` and the configured
``aud`` / ``iss``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import jwt

from gateway.settings import HMAC_ALGORITHMS, GatewaySettings
from runwire_common.context import id_problem


@dataclass(frozen=True, slots=True)
class DevToken:
    token: str
    user_id: str
    expires_at: int


class DevTokens:
    """Mints development tokens; ``None`` from :meth:`from_settings` when they are off."""

    __slots__ = ("_algorithm", "_audience", "_issuer", "_secret", "ttl_s")

    def __init__(
        self, secret: str, *, algorithm: str, ttl_s: float, audience: str | None, issuer: str | None
    ) -> None:
        self._secret = secret
        self._algorithm = algorithm
        self._audience = audience
        self._issuer = issuer
        self.ttl_s = ttl_s

    @classmethod
    def from_settings(cls, settings: GatewaySettings) -> DevTokens | None:
        if not settings.dev_tokens or settings.jwt_secret is None:
            return None
        algorithm = next(alg for alg in settings.jwt_algorithms if alg in HMAC_ALGORITHMS)
        return cls(
            settings.jwt_secret.get_secret_value(),
            algorithm=algorithm,
            ttl_s=settings.dev_token_ttl_s,
            audience=settings.jwt_audience,
            issuer=settings.jwt_issuer,
        )

    def mint(self, user: str) -> DevToken:
        """A token for ``user``; :class:`ValueError` with a user-safe reason for a bad name."""
        problem = id_problem(user)
        if problem is not None:
            raise ValueError(f"user name {problem}")
        now = int(time.time())
        expires_at = now + int(self.ttl_s)
        claims: dict[str, object] = {"sub": user, "iat": now, "exp": expires_at}
        if self._audience:
            claims["aud"] = self._audience
        if self._issuer:
            claims["iss"] = self._issuer
        return DevToken(jwt.encode(claims, self._secret, algorithm=self._algorithm), user, expires_at)
