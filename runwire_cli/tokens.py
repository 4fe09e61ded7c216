"""Development JWTs, signed like the gateway expects (HS256, ``sub`` and ``exp``)."""

from __future__ import annotations

import time
from collections.abc import Sequence

import jwt

from runwire_common.context import id_problem


def mint_token(
    secret: str,
    user: str,
    *,
    ttl_s: float = 3600,
    tenant_id: str | None = None,
    roles: Sequence[str] = (),
    audience: str | None = None,
    issuer: str | None = None,
) -> str:
    problem = id_problem(user)
    if problem is not None:
        raise ValueError(f"user name {problem}")
    now = int(time.time())
    claims: dict[str, object] = {"sub": user, "iat": now, "exp": now + int(ttl_s)}
    if tenant_id:
        claims["tenant_id"] = tenant_id
    if roles:
        claims["roles"] = list(roles)
    if audience:
        claims["aud"] = audience
    if issuer:
        claims["iss"] = issuer
    return jwt.encode(claims, secret, algorithm="HS256")
