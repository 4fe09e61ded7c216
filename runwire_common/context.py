"""Validation of the ``UserContext`` envelope, identical at every boundary.

One function, :func:`validate_context`, is called by every servicer of every
service before anything else happens. It rejects missing, blank and
placeholder ids with ``INVALID_ARGUMENT`` naming the field, and (through the
attestor) forged or expired identities with ``UNAUTHENTICATED``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from runwire.common.v1 import context_pb2
from runwire_common.attestation import ContextAttestor, check_roles
from runwire_common.errors import InvalidArgument

PLACEHOLDER_IDS = frozenset(
    {
        "none",
        "null",
        "undefined",
        "registry",
        "placeholder",
        "default",
        "temp",
        "0",
        "1",
        "example",
        "demo",
        "sample",
        "template",
        "mock",
        "fake",
        "dummy",
        "xxx",
        "test",
    }
)
PLACEHOLDER_PREFIXES = (
    "placeholder_",
    "registry_",
    "temp_",
    "example_",
    "demo_",
    "sample_",
    "template_",
    "mock_",
    "fake_",
)
SHORT_ID_LENGTH = 20
RESERVED_ATTRIBUTES = frozenset({"user_id", "thread_id", "run_id", "request_id", "connection_id"})
ID_FIELDS = (
    "user_id",
    "tenant_id",
    "thread_id",
    "run_id",
    "request_id",
    "connection_id",
    "parent_request_id",
)
MAX_OPERATION_DEPTH = 10
MAX_ID_LENGTH = 256
CONTROL_CHARACTER = re.compile(r"[\x00-\x1f\x7f]")


def id_problem(value: str) -> str | None:
    """Why ``value`` is not acceptable as an id, or ``None`` when it is."""
    stripped = value.strip()
    if not stripped:
        return "must not be blank"
    if stripped != value:
        return "must not have leading or trailing white space"
    if len(value) > MAX_ID_LENGTH:
        return f"must be at most {MAX_ID_LENGTH} characters"
    if CONTROL_CHARACTER.search(value):
        return "must not contain control characters"
    lowered = value.lower()
    if lowered in PLACEHOLDER_IDS:
        return f"{value!r} is a placeholder, not a real id"
    if len(value) < SHORT_ID_LENGTH and lowered.startswith(PLACEHOLDER_PREFIXES):
        return f"{value!r} looks like a placeholder id"
    return None


def validate_context(
    ctx: context_pb2.UserContext,
    *,
    attestor: ContextAttestor,
    require: Iterable[str] = (),
) -> context_pb2.UserContext:
    """Check ``ctx`` and return it.

    ``user_id`` is always required; ``require`` names further id fields the
    call needs (``thread_id``, ``run_id``). Optional ids are checked when set.
    Raises :class:`InvalidArgument` naming the field, or ``Unauthenticated``
    from the attestor.
    """
    required = {"user_id", *require}
    for name in ID_FIELDS:
        value: str = getattr(ctx, name)
        if not value:
            if name in required:
                raise InvalidArgument(f"user_context.{name} is required")
            continue
        problem = id_problem(value)
        if problem is not None:
            raise InvalidArgument(f"user_context.{name} {problem}")
    if not 0 <= ctx.operation_depth <= MAX_OPERATION_DEPTH:
        raise InvalidArgument(f"user_context.operation_depth must be between 0 and {MAX_OPERATION_DEPTH}")
    reserved = sorted(RESERVED_ATTRIBUTES.intersection(ctx.attributes))
    if reserved:
        raise InvalidArgument(f"user_context.attributes uses reserved key(s): {', '.join(reserved)}")
    check_roles(ctx.roles)  # empty or with control characters: refused before the MAC is checked
    attestor.verify(ctx)
    return ctx
