"""The attestation MAC is a fixed function of the identity: every service must compute it alike."""

from __future__ import annotations

from runwire.common.v1 import context_pb2
from runwire_common.attestation import ContextAttestor

# 32 bytes "0123456789abcdef0123456789abcdef", as a key spec.
KEY_SPEC = "kid:MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="
# HMAC-SHA256 over the length-prefixed user_id, tenant_id, roles (the sorted roles, each
# length-prefixed) and expiry seconds; computed independently of the code when the roles
# became length-prefixed (docs/grpc.md, the Node example).
KNOWN_MAC = "22290d44e8e7a430842669db26a906920ce8f1f5e4af84197eb11c01caf14ed8"


def identity(**changes: object) -> context_pb2.UserContext:
    ctx = context_pb2.UserContext(
        user_id="user_ünïcode_000000001",
        tenant_id="tenant_a",
        roles=["writer", "reader", "a,b"],
        run_id="r",
    )
    ctx.expires_at.seconds = 1_900_000_000
    for name, value in changes.items():
        setattr(ctx, name, value)
    return ctx


def test_the_mac_of_a_known_identity_is_unchanged() -> None:
    minted = ContextAttestor.from_spec(KEY_SPEC).mint(identity())
    assert minted.attestation.key_id == "kid"
    assert minted.attestation.mac.hex() == KNOWN_MAC


def test_fields_outside_the_identity_do_not_change_the_mac() -> None:
    attestor = ContextAttestor.from_spec(KEY_SPEC)
    assert attestor.mint(identity(run_id="other", request_id="req")).attestation.mac.hex() == KNOWN_MAC


def test_moving_a_character_between_identity_fields_changes_the_mac() -> None:
    attestor = ContextAttestor.from_spec(KEY_SPEC)
    base = attestor.mint(identity(user_id="ab", tenant_id="c")).attestation.mac
    assert attestor.mint(identity(user_id="a", tenant_id="bc")).attestation.mac != base
