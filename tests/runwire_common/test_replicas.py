"""Replica lists of a target and the stable spread of keys over them."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from runwire_common.replicas import ReplicaList, rendezvous, resolve_replicas, static_replicas


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


async def test_a_replica_list_gives_a_fixed_target_as_it_is() -> None:
    assert await ReplicaList("ipv4:127.0.0.1:1,127.0.0.1:2").current() == ("127.0.0.1:1", "127.0.0.1:2")


async def test_a_replica_list_looks_a_dns_name_up_again_only_after_its_interval(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    answers = [("10.0.0.1:5",), ("10.0.0.1:5", "10.0.0.2:5")]
    lookups: list[str] = []

    async def resolve(target: str) -> tuple[str, ...]:
        lookups.append(target)
        return answers[min(len(lookups), len(answers)) - 1]

    monkeypatch.setattr("runwire_common.replicas.resolve_replicas", resolve)
    replicas = ReplicaList("dns:///bridge:5", every_s=0.05)
    assert await replicas.current() == ("10.0.0.1:5",)
    assert await replicas.current() == ("10.0.0.1:5",)  # within the interval: no lookup
    await asyncio.sleep(0.06)
    assert await replicas.current() == ("10.0.0.1:5", "10.0.0.2:5")
    assert lookups == ["dns:///bridge:5", "dns:///bridge:5"]


async def test_a_failed_lookup_keeps_the_last_answer_and_fails_only_without_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = 0

    async def resolve(target: str) -> tuple[str, ...]:
        nonlocal calls
        calls += 1
        if calls == 2:
            return ("10.0.0.1:5",)
        raise OSError("no such host")

    monkeypatch.setattr("runwire_common.replicas.resolve_replicas", resolve)
    replicas = ReplicaList("dns:///bridge:5", every_s=0.0)
    with pytest.raises(OSError):
        await replicas.current()
    assert await replicas.current() == ("10.0.0.1:5",)
    assert await replicas.current() == ("10.0.0.1:5",)  # the third lookup failed: the last answer stands
