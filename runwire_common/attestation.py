"""HMAC attestation of the identity fields of a ``UserContext``.

Only the gateway (or an operator with ``runwire context mint``) turns a
credential into a context. It signs ``user_id``, ``tenant_id``, ``roles`` and
``expires_at`` with a key shared by the services; every service verifies the
MAC before trusting the identity. Several key ids are accepted at once so keys
can rotate: the first key not marked ``verify-only`` signs, all of them verify.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from runwire.common.v1 import context_pb2
from runwire_common.errors import InvalidArgument, Unauthenticated

MIN_KEY_BYTES = 32
MAX_ROLE_LENGTH = 256
VERIFY_ONLY = "verify-only"
LEGACY_MAC = "legacy-mac"
KEY_FLAGS = frozenset({VERIFY_ONLY, LEGACY_MAC})
_CONTROL_CHARACTER = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class AttestationKey:
    key_id: str
    secret: bytes
    verify_only: bool = False
    # Sign with the encoding of releases before the roles were length-prefixed (upgrades).
    legacy_mac: bool = False


def parse_keys(spec: str) -> tuple[AttestationKey, ...]:
    """Parse ``"kid1:base64secret[:flag...],kid2:..."``.

    Flags: ``verify-only`` (the key is accepted but never signs) and ``legacy-mac``
    (it signs with the previous release's MAC input, for an upgrade). The first key
    not marked ``verify-only`` signs; every key verifies.
    """
    keys: list[AttestationKey] = []
    for raw in spec.split(","):
        item = raw.strip()
        if not item:
            continue
        key_id, sep, rest = item.partition(":")
        key_id = key_id.strip()
        if not sep or not key_id:
            raise InvalidArgument("attestation key must look like KEY_ID:BASE64_SECRET[:verify-only]")
        encoded, *raw_flags = (part.strip() for part in rest.split(":"))
        flags = set(raw_flags)
        unknown = sorted(flags - KEY_FLAGS)
        if unknown:
            raise InvalidArgument(
                f"attestation key {key_id!r} has unknown flag {unknown[0]!r} (known: {', '.join(sorted(KEY_FLAGS))})"
            )
        try:
            secret = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
        except ValueError as exc:
            raise InvalidArgument(f"attestation key {key_id!r} is not valid base64") from exc
        if len(secret) < MIN_KEY_BYTES:
            raise InvalidArgument(f"attestation key {key_id!r} must be at least {MIN_KEY_BYTES} bytes")
        keys.append(AttestationKey(key_id, secret, VERIFY_ONLY in flags, LEGACY_MAC in flags))
    if not keys:
        raise InvalidArgument("no attestation key configured")
    if all(key.verify_only for key in keys):
        raise InvalidArgument("no signing key: every attestation key is marked verify-only")
    ids = [key.key_id for key in keys]
    if len(set(ids)) != len(ids):
        raise InvalidArgument("attestation key ids must be unique")
    return tuple(keys)


def generate_key_spec(key_id: str = "dev") -> str:
    """A fresh random key set of one key, in the format :func:`parse_keys` reads."""
    encoded = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")
    return f"{key_id}:{encoded}"


def role_problem(role: str) -> str | None:
    """Why ``role`` cannot be attested, or ``None`` when it can."""
    if not role:
        return "must not be empty"
    if len(role) > MAX_ROLE_LENGTH:
        return f"must be at most {MAX_ROLE_LENGTH} characters"
    if _CONTROL_CHARACTER.search(role):
        return "must not contain control characters"
    return None


def check_roles(roles: Iterable[str]) -> None:
    """Raise :class:`InvalidArgument` naming the first role that cannot be attested."""
    for index, role in enumerate(roles):
        problem = role_problem(role)
        if problem is not None:
            raise InvalidArgument(f"user_context.roles[{index}] {problem}")


def _prefixed(data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + data


def _canonical(ctx: context_pb2.UserContext) -> bytes:
    """The MAC input: user_id, tenant_id, roles and expiry, each length-prefixed.

    The roles field is itself the concatenation of the sorted roles, each
    length-prefixed, so no two role lists encode alike. Without roles this is
    byte for byte the previous release's input, so role-less contexts verify on
    both during an upgrade.
    """
    roles = b"".join(_prefixed(role.encode()) for role in sorted(ctx.roles))
    return _fields(ctx, roles)


def _legacy_canonical(ctx: context_pb2.UserContext) -> bytes:
    # The previous release: roles joined with U+001F. Unambiguous only for roles that
    # are non-empty and free of control characters, which :func:`check_roles` ensures.
    return _fields(ctx, "\x1f".join(sorted(ctx.roles)).encode())


def _fields(ctx: context_pb2.UserContext, roles: bytes) -> bytes:
    return b"".join(
        (
            _prefixed(ctx.user_id.encode()),
            _prefixed(ctx.tenant_id.encode()),
            _prefixed(roles),
            _prefixed(str(ctx.expires_at.seconds).encode()),
        )
    )


class ContextAttestor:
    """Signs and verifies contexts with an immutable key set."""

    def __init__(self, keys: tuple[AttestationKey, ...], *, clock_skew_s: float = 5.0) -> None:
        if not keys:
            raise InvalidArgument("no attestation key configured")
        signing = [k for k in keys if not k.verify_only]
        if not signing:
            raise InvalidArgument("no signing key: every attestation key is marked verify-only")
        self._signing = signing[0]
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
        check_roles(out.roles)
        encode = _legacy_canonical if self._signing.legacy_mac else _canonical
        mac = hmac.new(self._signing.secret, encode(out), hashlib.sha256).digest()
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
        check_roles(ctx.roles)
        if not self._matches(secret, ctx):
            raise Unauthenticated("user_context attestation does not match its identity")
        if ctx.expires_at.seconds + self._skew < time.time():
            raise Unauthenticated("user_context has expired")

    @staticmethod
    def _matches(secret: bytes, ctx: context_pb2.UserContext) -> bool:
        expected = hmac.new(secret, _canonical(ctx), hashlib.sha256).digest()
        if hmac.compare_digest(expected, ctx.attestation.mac):
            return True
        if not ctx.roles:  # both encodings are the same input: no second try needed
            return False
        # Transition: a replica of the previous release (or a key flagged legacy-mac)
        # signed with the joined roles; sound because check_roles passed.
        legacy = hmac.new(secret, _legacy_canonical(ctx), hashlib.sha256).digest()
        return hmac.compare_digest(legacy, ctx.attestation.mac)
