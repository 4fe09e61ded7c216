"""UserContext validation and attestation, the checks every service shares."""

from __future__ import annotations

import time

import pytest

from runwire.common.v1 import context_pb2
from runwire_common.attestation import ContextAttestor, generate_key_spec, parse_keys
from runwire_common.context import PLACEHOLDER_IDS, PLACEHOLDER_PREFIXES, validate_context
from runwire_common.errors import InvalidArgument, Unauthenticated

PLACEHOLDERS = sorted(PLACEHOLDER_IDS | {v.upper() for v in PLACEHOLDER_IDS} | {"Null", "TeSt"})
PREFIXED = [f"{prefix}abc" for prefix in PLACEHOLDER_PREFIXES]


def _ctx(attestor: ContextAttestor, **fields: object) -> context_pb2.UserContext:
    fields.setdefault("user_id", "user_4f1c2a9e")
    return attestor.mint(context_pb2.UserContext(**fields), ttl_s=60)  # type: ignore[arg-type]


def test_a_valid_context_is_accepted(attestor: ContextAttestor) -> None:
    ctx = _ctx(attestor, thread_id="thread_7b2d", run_id="run_91aa")
    assert validate_context(ctx, attestor=attestor, require=("thread_id", "run_id")) is ctx


@pytest.mark.parametrize("value", PLACEHOLDERS + PREFIXED)
@pytest.mark.parametrize("field", ["user_id", "thread_id", "run_id", "request_id"])
def test_placeholder_ids_are_rejected_naming_the_field(
    attestor: ContextAttestor, field: str, value: str
) -> None:
    fields = {"user_id": "user_4f1c2a9e", field: value}
    with pytest.raises(InvalidArgument, match=f"user_context.{field}"):
        validate_context(_ctx(attestor, **fields), attestor=attestor)


def test_long_ids_with_a_placeholder_prefix_are_real_ids(attestor: ContextAttestor) -> None:
    ctx = _ctx(attestor, user_id="temp_0123456789abcdefghij")
    validate_context(ctx, attestor=attestor)


@pytest.mark.parametrize("char", ["\x00", "\n", "\x1f", "\x7f"])
def test_ids_with_control_characters_are_rejected(attestor: ContextAttestor, char: str) -> None:
    ctx = _ctx(attestor, thread_id=f"thread_7b2d{char}9c0e")
    with pytest.raises(InvalidArgument, match="user_context.thread_id must not contain control characters"):
        validate_context(ctx, attestor=attestor)


def test_ids_with_other_characters_are_accepted(attestor: ContextAttestor) -> None:
    ctx = _ctx(attestor, thread_id="thread_7b2d ~\x80\u00e9\U0001f600")
    assert validate_context(ctx, attestor=attestor) is ctx


@pytest.mark.parametrize("value", ["", "   "])
def test_missing_or_blank_user_id_is_rejected(attestor: ContextAttestor, value: str) -> None:
    ctx = context_pb2.UserContext(user_id=value)
    with pytest.raises(InvalidArgument, match="user_context.user_id"):
        validate_context(ctx, attestor=attestor)


def test_required_ids_must_be_present(attestor: ContextAttestor) -> None:
    with pytest.raises(InvalidArgument, match="user_context.thread_id is required"):
        validate_context(_ctx(attestor), attestor=attestor, require=("thread_id",))


def test_reserved_attribute_keys_are_rejected(attestor: ContextAttestor) -> None:
    ctx = _ctx(attestor, attributes={"run_id": "x", "colour": "blue"})
    with pytest.raises(InvalidArgument, match="reserved key"):
        validate_context(ctx, attestor=attestor)


def test_operation_depth_above_ten_is_rejected(attestor: ContextAttestor) -> None:
    with pytest.raises(InvalidArgument, match="operation_depth"):
        validate_context(_ctx(attestor, operation_depth=11), attestor=attestor)


def test_an_unattested_context_is_unauthenticated(attestor: ContextAttestor) -> None:
    with pytest.raises(Unauthenticated, match="not attested"):
        validate_context(context_pb2.UserContext(user_id="user_4f1c2a9e"), attestor=attestor)


def test_an_altered_user_id_breaks_the_attestation(attestor: ContextAttestor) -> None:
    ctx = _ctx(attestor)
    ctx.user_id = "user_someone_else"
    with pytest.raises(Unauthenticated, match="does not match"):
        validate_context(ctx, attestor=attestor)


def test_altered_roles_break_the_attestation(attestor: ContextAttestor) -> None:
    ctx = _ctx(attestor, roles=["reader"])
    ctx.roles.append("admin")
    with pytest.raises(Unauthenticated):
        validate_context(ctx, attestor=attestor)


def test_a_context_signed_with_another_key_is_rejected(attestor: ContextAttestor) -> None:
    other = ContextAttestor.from_spec(generate_key_spec("test"))
    with pytest.raises(Unauthenticated):
        validate_context(_ctx(other), attestor=attestor)


def test_an_expired_context_is_rejected(attestor: ContextAttestor) -> None:
    ctx = context_pb2.UserContext(user_id="user_4f1c2a9e")
    ctx.expires_at.seconds = int(time.time()) - 60
    with pytest.raises(Unauthenticated, match="expired"):
        validate_context(attestor.mint(ctx), attestor=attestor)


def test_rotated_keys_verify_contexts_of_the_previous_key() -> None:
    old, new = generate_key_spec("k1"), generate_key_spec("k2")
    before = ContextAttestor.from_spec(old)
    after = ContextAttestor.from_spec(f"{new},{old}")
    ctx = before.mint(context_pb2.UserContext(user_id="user_4f1c2a9e"), ttl_s=60)
    after.verify(ctx)
    assert after.mint(ctx).attestation.key_id == "k2"


@pytest.mark.parametrize("spec", ["", "nokey", "k1:", "k1:c2hvcnQ", ":AAAA"])
def test_bad_key_specs_are_refused(spec: str) -> None:
    with pytest.raises(InvalidArgument):
        parse_keys(spec)
