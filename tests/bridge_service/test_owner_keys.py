"""Redis keys of an owner ``(tenant_id, user_id)``: one slot per owner, distinct per owner, whatever the ids."""

from __future__ import annotations

import itertools

from redis.crc import key_slot

from bridge_service.redis_scripts import user_keys
from runwire_common.owners import owner_key

IDS = ["{", "}", "{}", "a{b}c", "%7B", "a:b", "b:c", "a", "c", "user_plain"]


def test_every_key_of_an_owner_is_on_one_slot_and_owners_never_share_keys() -> None:
    streams: set[str] = set()
    for tenant, user in itertools.product(["", *IDS], IDS):
        keys = user_keys("runwire", owner_key(tenant, user))
        assert len({key_slot(key.encode()) for key in keys}) == 1, (tenant, user)
        streams.add(keys.stream)
    assert len(streams) == (len(IDS) + 1) * len(IDS)


def test_an_owner_without_a_tenant_keeps_the_keys_it_had() -> None:
    assert user_keys("runwire", owner_key("", "user_plain")).stream == "runwire:{user_plain}:events"
