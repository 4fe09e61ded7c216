"""The owner key: ``(tenant_id, user_id)`` as one string, unambiguous, and unchanged without a tenant."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from runwire.common.v1 import context_pb2
from runwire_common.context import id_problem
from runwire_common.owners import Owner, key_of, owner_key, owner_of

# Valid ids (no control characters, no surrounding blanks), separators and digits included.
ids = st.text(st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=12).filter(
    lambda value: id_problem(value) is None
)
owners = st.tuples(st.one_of(st.just(""), ids), ids)


def test_an_owner_without_a_tenant_keeps_its_user_id_as_key() -> None:
    assert owner_key("", "user_alice_0123456789") == "user_alice_0123456789"


def test_separators_inside_ids_cannot_make_two_owners_one() -> None:
    keys = {
        owner_key("a:b", "c"),
        owner_key("a", "b:c"),
        owner_key("", "a:b:c"),
        owner_key("1", "2:ab"),
        owner_key("12", "ab"),
        owner_key("a{", "}b"),
        owner_key("a", "{}b"),
    }
    assert len(keys) == 7


@given(owners, owners)
def test_two_owners_have_one_key_only_when_they_are_the_same_owner(
    first: tuple[str, str], second: tuple[str, str]
) -> None:
    assert (owner_key(*first) == owner_key(*second)) == (first == second)


@given(ids, ids)
def test_a_tenanted_key_is_never_a_valid_user_id(tenant: str, user: str) -> None:
    assert id_problem(owner_key(tenant, user)) is not None


def test_contexts_and_events_name_their_owner_alike() -> None:
    ctx = context_pb2.UserContext(user_id="user_alice_0123456789", tenant_id="tenant_acme")
    assert owner_of(ctx) == Owner("tenant_acme", "user_alice_0123456789")
    assert (
        key_of(ctx)
        == Owner("tenant_acme", "user_alice_0123456789").key
        == owner_key("tenant_acme", ctx.user_id)
    )
