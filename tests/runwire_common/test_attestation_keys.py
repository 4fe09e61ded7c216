"""Key sets with verify-only keys, and an unambiguous encoding of the roles."""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools

import pytest

from runwire.common.v1 import context_pb2
from runwire_common.attestation import ContextAttestor, generate_key_spec, parse_keys
from runwire_common.context import validate_context
from runwire_common.errors import InvalidArgument, Unauthenticated


def _secret(spec: str) -> str:
    return spec.partition(":")[2]


def _identity(*roles: str) -> context_pb2.UserContext:
    ctx = context_pb2.UserContext(user_id="user_4f1c2a9e", roles=list(roles))
    ctx.expires_at.seconds = 4_000_000_000
    return ctx


def test_a_verify_only_key_verifies_but_never_signs() -> None:
    old, new = _secret(generate_key_spec()), _secret(generate_key_spec())
    rolling = ContextAttestor.from_spec(f"k1:{old},k2:{new}:verify-only")
    signed_by_new = ContextAttestor.from_spec(f"k2:{new}").mint(_identity())
    rolling.verify(signed_by_new)
    assert rolling.mint(_identity()).attestation.key_id == "k1"


def test_the_first_key_not_marked_verify_only_signs_wherever_it_is_listed() -> None:
    old, new = _secret(generate_key_spec()), _secret(generate_key_spec())
    switched = ContextAttestor.from_spec(f"k1:{old}:verify-only,k2:{new}")
    assert switched.mint(_identity()).attestation.key_id == "k2"
    switched.verify(ContextAttestor.from_spec(f"k1:{old}").mint(_identity()))


def test_specs_without_markers_keep_their_meaning() -> None:
    keys = parse_keys(f"a:{_secret(generate_key_spec())}, b:{_secret(generate_key_spec())}")
    assert [(k.key_id, k.verify_only) for k in keys] == [("a", False), ("b", False)]
    assert ContextAttestor(keys).mint(_identity()).attestation.key_id == "a"


def test_a_key_set_of_verify_only_keys_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="no signing key"):
        parse_keys(f"k1:{_secret(generate_key_spec())}:verify-only")


def test_an_unknown_key_flag_is_refused_without_echoing_the_secret() -> None:
    secret = _secret(generate_key_spec())
    with pytest.raises(InvalidArgument, match="unknown flag 'verify'") as caught:
        parse_keys(f"k1:{secret}:verify")
    assert secret not in str(caught.value)


def test_role_lists_that_joined_alike_now_attest_differently() -> None:
    # With the roles joined by U+001F, ["a", "b"] and ["a\x1fb"] were the same MAC input:
    # a context attested for one verified as the other.
    attestor = ContextAttestor.from_spec(generate_key_spec())
    ctx = attestor.mint(_identity("a", "b"))
    del ctx.roles[:]
    ctx.roles.append("a\x1fb")
    with pytest.raises((Unauthenticated, InvalidArgument)):
        attestor.verify(ctx)


def test_roles_are_length_prefixed_in_the_mac_input() -> None:
    # One role containing ", " against two roles: distinct even without control characters.
    attestor = ContextAttestor.from_spec(generate_key_spec())
    ctx = attestor.mint(_identity("a", "b"))
    del ctx.roles[:]
    ctx.roles.append("ab")
    with pytest.raises(Unauthenticated):
        attestor.verify(ctx)


@pytest.mark.parametrize("role", ["", "a\x1fb", "admin\n", "\x00", "x\x7f"])
def test_roles_with_control_characters_or_empty_are_refused(role: str) -> None:
    attestor = ContextAttestor.from_spec(generate_key_spec())
    with pytest.raises(InvalidArgument, match=r"user_context.roles\[1\]"):
        attestor.mint(_identity("reader", role))
    forged = attestor.mint(_identity("reader"))
    forged.roles.append(role)
    with pytest.raises(InvalidArgument, match=r"user_context.roles\[1\]"):
        validate_context(forged, attestor=attestor)


def _legacy_mac(secret: bytes, ctx: context_pb2.UserContext) -> bytes:
    """The encoding before the roles were length-prefixed: sorted roles joined by U+001F."""
    fields = [ctx.user_id, ctx.tenant_id, "\x1f".join(sorted(ctx.roles)), str(ctx.expires_at.seconds)]
    data = b"".join(len(f.encode()).to_bytes(4, "big") + f.encode() for f in fields)
    return hmac.new(secret, data, hashlib.sha256).digest()


def test_contexts_minted_by_a_replica_of_the_previous_release_still_verify() -> None:
    spec = generate_key_spec("k1")
    secret = base64.urlsafe_b64decode(_secret(spec) + "=" * (-len(_secret(spec)) % 4))
    ctx = _identity("writer", "reader")
    ctx.attestation.key_id = "k1"
    ctx.attestation.mac = _legacy_mac(secret, ctx)
    ContextAttestor.from_spec(spec).verify(ctx)


def test_a_key_flagged_legacy_mac_signs_as_the_previous_release_did() -> None:
    spec = generate_key_spec("k1")
    secret = base64.urlsafe_b64decode(_secret(spec) + "=" * (-len(_secret(spec)) % 4))
    minted = ContextAttestor.from_spec(f"{spec}:legacy-mac").mint(_identity("writer", "reader"))
    assert minted.attestation.mac == _legacy_mac(secret, minted)
    ContextAttestor.from_spec(spec).verify(minted)


def test_every_step_of_a_rotation_accepts_what_the_steps_next_to_it_sign() -> None:
    old, new = _secret(generate_key_spec()), _secret(generate_key_spec())
    steps = [
        ContextAttestor.from_spec(f"k1:{old}"),  # before
        ContextAttestor.from_spec(f"k1:{old},k2:{new}:verify-only"),  # 1. add
        ContextAttestor.from_spec(f"k1:{old}:verify-only,k2:{new}"),  # 2. switch signing
        ContextAttestor.from_spec(f"k2:{new}"),  # 3. remove
    ]
    # During each roll, replicas on two neighbouring steps serve together: each accepts the other's.
    for earlier, later in itertools.pairwise(steps):
        for signer in (earlier, later):
            minted = signer.mint(_identity("admin"))
            earlier.verify(minted)
            later.verify(minted)
    with pytest.raises(Unauthenticated):
        steps[3].verify(steps[0].mint(_identity()))  # the old key is gone for good
