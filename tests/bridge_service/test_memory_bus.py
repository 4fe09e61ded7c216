"""The in-memory bus on its own: ids, ordering, trimming, hand-off, overflow, drain."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from unittest.mock import ANY

import pytest

from bridge_service.bus import BusDraining, BusItem, Events, Gap, ReplayComplete, RunEvent, SubscriberOverflow
from bridge_service.memory_bus import MemoryEventBus
from runwire_common.errors import InvalidArgument

ALICE = "user_alice_0123456789abcdef"
BOB = "user_bob_0123456789abcdefgh"


class SteppingClock:
    """Returns the given readings in turn, then repeats the last one."""

    def __init__(self, *readings: int) -> None:
        self._readings = list(readings)

    def __call__(self) -> int:
        return self._readings.pop(0) if len(self._readings) > 1 else self._readings[0]


def ev(user_id: str = ALICE, seq: int = 1, run_id: str = "run_0123456789abcdefghij") -> RunEvent:
    return RunEvent(user_id=user_id, run_id=run_id, seq=seq, type="agent_thinking", payload_json="{}")


async def publish(bus: MemoryEventBus, user_id: str, events: list[RunEvent]) -> list[str]:
    return list((await bus.publish(user_id, events)).event_ids)


async def take(subscription: AsyncGenerator[BusItem, None], count: int) -> list[BusItem]:
    return [await anext(subscription) for _ in range(count)]


def single(item: BusItem) -> RunEvent:
    """The one event of ``item`` (subscriptions deliver one event per item unless asked for batches)."""
    assert isinstance(item, Events), item
    [event] = item.parse()
    return event


def event_ids(items: list[BusItem]) -> list[str]:
    return [event.event_id for item in items if isinstance(item, Events) for event in item.parse()]


async def test_ids_stay_strictly_increasing_when_the_clock_is_frozen() -> None:
    bus = MemoryEventBus(clock=SteppingClock(1_000))
    ids = await publish(bus, ALICE, [ev(seq=s) for s in range(1, 5)])
    assert ids == ["1000-1", "1000-2", "1000-3", "1000-4"]


async def test_ids_never_go_back_when_the_clock_does() -> None:
    bus = MemoryEventBus(clock=SteppingClock(2_000, 2_005, 1_990, 1_990, 2_010))
    ids = await publish(bus, ALICE, [ev(seq=s) for s in range(1, 5)])
    assert ids == ["2005-0", "2005-1", "2005-2", "2010-0"]


async def test_each_user_has_an_independent_id_sequence() -> None:
    bus = MemoryEventBus(clock=SteppingClock(500))
    assert await publish(bus, ALICE, [ev(ALICE)]) == ["500-1"]
    assert await publish(bus, BOB, [ev(BOB)]) == ["500-1"]
    assert await publish(bus, ALICE, [ev(ALICE, seq=2)]) == ["500-2"]


async def test_publish_does_not_modify_the_callers_events() -> None:
    bus = MemoryEventBus()
    original = ev()
    [event_id] = await publish(bus, ALICE, [original])
    assert original.event_id == ""
    subscription = bus.subscribe(ALICE, after="1-0")
    gap, stored, _ = await take(subscription, 3)
    assert isinstance(gap, Gap)
    assert single(stored).event_id == event_id
    await subscription.aclose()


async def test_cursors_compare_numerically_not_as_text() -> None:
    bus = MemoryEventBus(clock=SteppingClock(8, 9, 10))
    ids = await publish(bus, ALICE, [ev(seq=1), ev(seq=2)])
    assert ids == ["9-0", "10-0"]  # "10-0" < "9-0" as text
    subscription = bus.subscribe(ALICE, after="9-0")
    replayed, complete = await take(subscription, 2)
    assert single(replayed).event_id == "10-0"
    assert complete == ReplayComplete(replayed=1, resume_after=ANY)
    await subscription.aclose()


async def test_log_keeps_only_the_newest_events_up_to_its_capacity() -> None:
    bus = MemoryEventBus(log_capacity=3)
    ids = await publish(bus, ALICE, [ev(seq=s) for s in range(1, 6)])
    assert bus.retained(ALICE) == ids[2:]


async def test_trimmed_cursor_gets_a_gap_naming_the_oldest_retained_event() -> None:
    bus = MemoryEventBus(log_capacity=3)
    ids = await publish(bus, ALICE, [ev(seq=s) for s in range(1, 6)])
    subscription = bus.subscribe(ALICE, after=ids[0])
    items = await take(subscription, 5)
    assert items[0] == Gap(requested_after=ids[0], oldest_event_id=ids[2])
    assert event_ids(items[1:4]) == ids[2:]
    assert items[4] == ReplayComplete(replayed=3, resume_after=ANY)
    await subscription.aclose()


async def test_foreign_event_in_a_batch_stores_nothing() -> None:
    bus = MemoryEventBus()
    with pytest.raises(InvalidArgument):
        await bus.publish(ALICE, [ev(ALICE), ev(BOB)])
    assert bus.retained(ALICE) == []
    assert bus.retained(BOB) == []


async def test_events_published_during_the_replay_arrive_once_after_it() -> None:
    bus = MemoryEventBus()
    first = await publish(bus, ALICE, [ev(seq=s) for s in range(1, 4)])
    subscription = bus.subscribe(ALICE, after=first[0])
    # The subscription is registered and its snapshot taken at the first item.
    replayed_first = await anext(subscription)
    during = await publish(bus, ALICE, [ev(seq=4), ev(seq=5)])
    rest = await take(subscription, 4)
    events = [replayed_first, *rest]
    assert event_ids(events) == first[1:] + during
    assert ReplayComplete(replayed=2, resume_after=ANY) in events
    await subscription.aclose()


async def test_subscribers_receive_only_their_own_users_events() -> None:
    bus = MemoryEventBus()
    alice_sub, bob_sub = bus.subscribe(ALICE), bus.subscribe(BOB)
    assert await anext(alice_sub) == ReplayComplete(replayed=0, resume_after=ANY)
    assert await anext(bob_sub) == ReplayComplete(replayed=0, resume_after=ANY)
    [bob_id] = await publish(bus, BOB, [ev(BOB)])
    [alice_id] = await publish(bus, ALICE, [ev(ALICE)])
    got_alice, got_bob = single(await anext(alice_sub)), single(await anext(bob_sub))
    assert (got_alice.user_id, got_alice.event_id) == (ALICE, alice_id)
    assert (got_bob.user_id, got_bob.event_id) == (BOB, bob_id)
    await alice_sub.aclose()
    await bob_sub.aclose()


async def test_overflow_ends_only_the_full_subscriber_with_its_last_delivered_cursor() -> None:
    bus = MemoryEventBus(subscriber_queue=2)
    [before] = await publish(bus, ALICE, [ev()])
    slow, fast = bus.subscribe(ALICE), bus.subscribe(ALICE)
    assert await anext(slow) == ReplayComplete(replayed=0, resume_after=ANY)
    assert await anext(fast) == ReplayComplete(replayed=0, resume_after=ANY)
    ids: list[str] = []
    for seq in range(2, 5):
        ids += await publish(bus, ALICE, [ev(seq=seq)])
        assert single(await anext(fast)).event_id == ids[-1]
    assert bus.subscriber_count(ALICE) == 1
    with pytest.raises(SubscriberOverflow) as caught:
        await anext(slow)
    assert caught.value.cursor == before
    assert caught.value.message == f"subscriber fell behind; resume after {before}"
    await fast.aclose()


async def test_closing_a_subscription_unregisters_it_and_frees_an_idle_user() -> None:
    bus = MemoryEventBus()
    subscription = bus.subscribe(ALICE)
    await anext(subscription)
    assert bus.subscriber_count(ALICE) == 1
    await subscription.aclose()
    assert bus.subscriber_count(ALICE) == 0
    assert bus._users == {}  # a user who never published keeps no state


async def test_drain_ends_live_subscriptions_and_refuses_new_ones() -> None:
    bus = MemoryEventBus()
    [event_id] = await publish(bus, ALICE, [ev()])
    live = bus.subscribe(ALICE, after=event_id)
    assert await anext(live) == ReplayComplete(replayed=0, resume_after=ANY)
    await bus.drain()
    with pytest.raises(BusDraining) as caught:
        await anext(live)
    assert caught.value.cursor == event_id
    with pytest.raises(BusDraining) as refused:
        await anext(bus.subscribe(ALICE, after="1-0"))
    assert refused.value.cursor == "1-0"  # nothing delivered: resume where it asked to
    assert bus.subscriber_count(ALICE) == 0
    assert len(await publish(bus, ALICE, [ev(seq=2)])) == 1  # in-flight runs can still record


@pytest.mark.parametrize(("capacity", "queue"), [(0, 1), (1, 0)])
def test_bus_refuses_zero_capacities(capacity: int, queue: int) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        MemoryEventBus(log_capacity=capacity, subscriber_queue=queue)


async def test_a_live_only_subscription_learns_a_cursor_that_resumes_exactly_there() -> None:
    bus = MemoryEventBus(log_capacity=100, subscriber_queue=100)
    await publish(bus, ALICE, [ev(seq=1), ev(seq=2)])
    live = bus.subscribe(ALICE)
    complete = await anext(live)
    assert isinstance(complete, ReplayComplete) and complete.replayed == 0
    assert complete.resume_after == bus.retained(ALICE)[-1]
    await live.aclose()
    missed = await publish(bus, ALICE, [ev(seq=3), ev(seq=4)])
    resumed = bus.subscribe(ALICE, after=complete.resume_after)
    items = await take(resumed, 3)
    assert event_ids(items[:2]) == missed
    assert items[2] == ReplayComplete(replayed=2, resume_after=missed[-1])
    await resumed.aclose()


async def test_a_cursor_taken_from_an_empty_log_resumes_without_a_gap() -> None:
    bus = MemoryEventBus(log_capacity=100, subscriber_queue=100)
    live = bus.subscribe(ALICE)
    complete = await anext(live)
    assert isinstance(complete, ReplayComplete) and complete.resume_after
    await live.aclose()
    published = await publish(bus, ALICE, [ev(seq=1)])
    resumed = bus.subscribe(ALICE, after=complete.resume_after)
    items = await take(resumed, 2)
    assert not any(isinstance(i, Gap) for i in items)
    assert event_ids(items) == published
    await resumed.aclose()


async def test_run_state_is_bounded_and_forgets_finished_runs_first() -> None:
    bus = MemoryEventBus(run_state_capacity=2, run_state_hold_s=0)  # no retry window to wait for
    run_a, run_b, run_c = (f"run_{x}_0123456789abcdefgh" for x in "abc")
    await publish(bus, ALICE, [RunEvent(user_id=ALICE, run_id=run_a, seq=1, type="agent_completed")])
    await publish(bus, ALICE, [ev(run_id=run_b, seq=1)])
    await publish(bus, ALICE, [ev(run_id=run_c, seq=1)])  # evicts run_a (finished), keeps live run_b
    assert await publish(bus, ALICE, [ev(run_id=run_b, seq=1)]) == [""]  # still fenced
    # run_a was forgotten: a late duplicate of it is stored again (documented trade-off).
    assert len((await publish(bus, ALICE, [ev(run_id=run_a, seq=1)]))[0]) > 0


def ended(run_id: str) -> RunEvent:
    return RunEvent(user_id=ALICE, run_id=run_id, seq=1, type="agent_completed")


async def test_finished_runs_keep_their_fencing_state_for_the_hold_whatever_their_number() -> None:
    now = [1_000_000]
    bus = MemoryEventBus(run_state_capacity=2, run_state_hold_s=10, clock=lambda: now[0])
    runs = [f"run_hold{i}_0123456789abcdef" for i in range(5)]
    for run in runs:
        assert await publish(bus, ALICE, [ended(run)]) != [""]
    # Beyond the capacity, but all finished within the hold: every one is still fenced.
    for run in runs:
        assert await publish(bus, ALICE, [ended(run)]) == [""]
    now[0] += 10_001  # the hold is over: beyond the capacity, the oldest finished runs go first
    fresh = "run_fresh_0123456789abcde"
    await publish(bus, ALICE, [ended(fresh)])
    assert await publish(bus, ALICE, [ended(runs[-1])]) == [""]  # within the capacity, still kept
    assert await publish(bus, ALICE, [ended(runs[0])]) != [""]  # forgotten: stored again


async def test_fencing_state_beyond_the_hard_bound_goes_oldest_first_even_within_the_hold() -> None:
    bus = MemoryEventBus(run_state_capacity=2, run_state_max=3)
    runs = [f"run_hard{i}_0123456789abcdef" for i in range(5)]
    for run in runs:
        await publish(bus, ALICE, [ended(run)])
    assert [await publish(bus, ALICE, [ended(run)]) == [""] for run in runs[2:]] == [True] * 3
    assert await publish(bus, ALICE, [ended(runs[1])]) != [""]


async def test_live_runs_are_forgotten_only_beyond_the_hard_bound() -> None:
    bus = MemoryEventBus(run_state_capacity=1, run_state_max=2, run_state_hold_s=0)
    runs = [f"run_live{i}_0123456789abcdef" for i in range(3)]
    for run in runs[:2]:
        await publish(bus, ALICE, [ev(run_id=run, seq=1)])
    assert await publish(bus, ALICE, [ev(run_id=runs[0], seq=1)]) == [""]  # two live runs: both kept
    await publish(bus, ALICE, [ev(run_id=runs[2], seq=1)])  # beyond the bound: the least recently active
    assert await publish(bus, ALICE, [ev(run_id=runs[1], seq=1)]) == [""]
    assert await publish(bus, ALICE, [ev(run_id=runs[0], seq=1)]) != [""]  # forgotten: stored again


def test_the_fencing_bounds_are_checked() -> None:
    with pytest.raises(ValueError):
        MemoryEventBus(run_state_capacity=3, run_state_max=2)
    with pytest.raises(ValueError):
        MemoryEventBus(run_state_hold_s=-1)


async def test_log_is_also_bounded_by_the_bytes_of_its_events_keeping_the_newest() -> None:
    big = '{"content": "' + "x" * 1000 + '"}'
    bus = MemoryEventBus(log_max_bytes=2_500)
    ids = await publish(
        bus,
        ALICE,
        [
            RunEvent(user_id=ALICE, run_id=ev().run_id, seq=s, type="partial_result", payload_json=big)
            for s in range(1, 6)
        ],
    )
    assert bus.retained(ALICE) == ids[3:]  # two events of ~1.1 KB fit
    subscription = bus.subscribe(ALICE, after=ids[0])
    gap = await anext(subscription)
    assert gap == Gap(requested_after=ids[0], oldest_event_id=ids[3])
    await subscription.aclose()
    tiny = MemoryEventBus(log_max_bytes=1)
    [only] = await publish(tiny, ALICE, [ev()])
    assert tiny.retained(ALICE) == [only]  # the newest event is always kept


async def test_events_older_than_the_retention_are_trimmed_and_idle_users_forgotten() -> None:
    now = [1_000_000]
    bus = MemoryEventBus(retention_s=10, clock=lambda: now[0])
    old = await publish(bus, ALICE, [ev(seq=1), ev(seq=2)])
    await publish(bus, BOB, [ev(BOB)])
    now[0] += 5_000
    recent = await publish(bus, ALICE, [ev(seq=3)])
    now[0] += 6_000  # ALICE's first two events are 11 s old, the third 6 s
    subscription = bus.subscribe(ALICE, after=old[0])
    assert await anext(subscription) == Gap(requested_after=old[0], oldest_event_id=recent[0])
    await subscription.aclose()
    assert bus.retained(ALICE) == recent
    assert BOB not in bus._users  # idle past the retention, no subscriber: forgotten
    # A forgotten user's old cursor is reported as a gap, and ids keep increasing.
    subscription = bus.subscribe(BOB, after="1000000-1")
    assert await anext(subscription) == Gap(requested_after="1000000-1", oldest_event_id="")
    await subscription.aclose()
    [later] = await publish(bus, BOB, [ev(BOB)])
    assert later > "1000000-1"


async def test_a_subscriber_holds_its_users_log_past_the_retention() -> None:
    now = [1_000_000]
    bus = MemoryEventBus(retention_s=1, clock=lambda: now[0])
    await publish(bus, ALICE, [ev()])
    live = bus.subscribe(ALICE)
    await anext(live)
    now[0] += 5_000
    await publish(bus, BOB, [ev(BOB)])  # a sweep
    assert bus.subscriber_count(ALICE) == 1 and bus.retained(ALICE) == []
    [event_id] = await publish(bus, ALICE, [ev(seq=2)])
    assert single(await anext(live)).event_id == event_id
    await live.aclose()
