"""HMAC attestation of the identity fields of a ``UserContext``.

Only the gateway (or an operator with ``runwire context mint``) turns a
credential into a context. It signs ``user_id``, ``tenant_id``, ``roles`` and
``expires_at`` with a key shared by the services; every service verifies the
MAC before trusting the identity. Several key ids are accepted at once so keys
can rotate: the first key of the set signs, all of them verify.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from runwire.common.v1 import context_pb2
from runwire_common.errors import InvalidArgument, Unauthenticated

MIN_KEY_BYTES = 32


@dataclass(frozen=True)
class AttestationKey:
    key_id: str
    secret: bytes


def parse_keys(spec: str) -> tuple[AttestationKey, ...]:
    """Parse ``"kid1:base64secret,kid2:base64secret"``; the first key signs."""
    keys: list[AttestationKey] = []
    for raw in spec.split(","):
        item = raw.strip()
        if not item:
            continue
        key_id, sep, encoded = item.partition(":")
        if not sep or not key_id.strip():
            raise InvalidArgument("attestation key must look like KEY_ID:BASE64_SECRET")
        try:
            secret = base64.urlsafe_b64decode(encoded.strip() + "=" * (-len(encoded.strip()) % 4))
        except ValueError as exc:
            raise InvalidArgument(f"attestation key {key_id!r} is not valid base64") from exc
        if len(secret) < MIN_KEY_BYTES:
            raise InvalidArgument(f"attestation key {key_id!r} must be at least {MIN_KEY_BYTES} bytes")
        keys.append(AttestationKey(key_id.strip(), secret))
    if not keys:
        raise InvalidArgument("no attestation key configured")
    return tuple(keys)


def generate_key_spec(key_id: str = "dev") -> str:
    """A fresh random key set of one key, in the format :func:`parse_keys` reads."""
    encoded = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")
    return f"{key_id}:{encoded}"


def _canonical(ctx: context_pb2.UserContext) -> bytes:
    # Length-prefixed fields, so no two different identities encode alike. Runs on every
    # mint and verify, hence each field encoded once and one join.
    user = ctx.user_id.encode()
    tenant = ctx.tenant_id.encode()
    roles = "\x1f".join(sorted(ctx.roles)).encode()
    expiry = str(ctx.expires_at.seconds).encode()
    return b"".join(
        (
            len(user).to_bytes(4, "big"),
            user,
            len(tenant).to_bytes(4, "big"),
            tenant,
            len(roles).to_bytes(4, "big"),
            roles,
            len(expiry).to_bytes(4, "big"),
            expiry,
        )
    )


class ContextAttestor:
    """Signs and verifies contexts with an immutable key set."""

    def __init__(self, keys: tuple[AttestationKey, ...], *, clock_skew_s: float = 5.0) -> None:
        if not keys:
            raise InvalidArgument("no attestation key configured")
        self._signing = keys[0]
        self._keys: Mapping[str, bytes] = MappingProxyType({k.key_id: k.secret for k in keys})
        self._skew = clock_skew_s

    @classmethod
    def from_spec(cls, spec: str) -> ContextAttestor:
        return cls(parse_keys(spec))

    def mint(
        self,
        ctx: context_pb2.UserContext,
        *,
        ttl_s: float | None = None,
    ) -> context_pb2.UserContext:
        """Return a copy of ``ctx`` with a fresh attestation (and expiry, if ``ttl_s``)."""
        out = context_pb2.UserContext()
        out.CopyFrom(ctx)
        if ttl_s is not None:
            out.expires_at.seconds = int(time.time() + ttl_s)
            out.expires_at.nanos = 0
        if not out.HasField("expires_at") or out.expires_at.seconds <= 0:
            raise InvalidArgument("a context needs expires_at before it can be attested")
        mac = hmac.new(self._signing.secret, _canonical(out), hashlib.sha256).digest()
        out.attestation.key_id = self._signing.key_id
        out.attestation.mac = mac
        return out

    def verify(self, ctx: context_pb2.UserContext) -> None:
        """Raise :class:`Unauthenticated` unless ``ctx`` is attested and unexpired."""
        if not ctx.HasField("attestation") or not ctx.attestation.mac:
            raise Unauthenticated("user_context is not attested")
        secret = self._keys.get(ctx.attestation.key_id)
        if secret is None:
            raise Unauthenticated("user_context is attested with an unknown key")
        expected = hmac.new(secret, _canonical(ctx), hashlib.sha256).digest()
        if not hmac.compare_digest(expected, ctx.attestation.mac):
            raise Unauthenticated("user_context attestation does not match its identity")
        if ctx.expires_at.seconds + self._skew < time.time():
            raise Unauthenticated("user_context has expired")
