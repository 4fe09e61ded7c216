"""Replica lists of a target and the stable spread of keys over them."""

from __future__ import annotations

from collections import Counter

import pytest

from runwire_common.replicas import rendezvous, resolve_replicas, static_replicas


def test_a_single_target_is_one_replica() -> None:
    assert static_replicas("127.0.0.1:5000") == ("127.0.0.1:5000",)


def test_an_ipv4_list_names_each_replica() -> None:
    assert static_replicas("ipv4:127.0.0.1:1,127.0.0.1:2") == ("127.0.0.1:1", "127.0.0.1:2")


def test_a_dns_target_is_not_static() -> None:
    assert static_replicas("dns:///bridge:50051") is None


def test_an_empty_target_is_refused() -> None:
    with pytest.raises(ValueError):
        static_replicas(" , ")


async def test_a_dns_target_resolves_to_its_addresses() -> None:
    assert await resolve_replicas("dns:///localhost:50051") in (
        ("127.0.0.1:50051",),
        ("127.0.0.1:50051", "[::1]:50051"),
        ("[::1]:50051",),
    )


async def test_a_malformed_dns_target_is_refused() -> None:
    with pytest.raises(ValueError):
        await resolve_replicas("dns:///no-port")


def test_keys_spread_over_every_replica() -> None:
    replicas = ["a:1", "b:1", "c:1"]
    counts = Counter(rendezvous(f"user-{i}", replicas) for i in range(3000))
    assert set(counts) == set(replicas)
    assert min(counts.values()) > 800


def test_only_the_keys_of_a_departed_replica_move() -> None:
    replicas = ["a:1", "b:1", "c:1"]
    before = {f"user-{i}": rendezvous(f"user-{i}", replicas) for i in range(1000)}
    after = {key: rendezvous(key, ["a:1", "c:1"]) for key in before}
    moved = {key for key in before if before[key] != after[key]}
    assert moved == {key for key, replica in before.items() if replica == "b:1"}


def test_the_choice_does_not_depend_on_list_order() -> None:
    assert all(rendezvous(f"k{i}", ["a:1", "b:1"]) == rendezvous(f"k{i}", ["b:1", "a:1"]) for i in range(100))
