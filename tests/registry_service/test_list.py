"""ListRuns: the caller's runs, newest first, filtered and paged."""

from __future__ import annotations

import grpc
import pytest

from runwire.common.v1 import run_pb2
from runwire.registry.v1 import registry_pb2
from runwire_common.ids import new_id
from tests.registry_service.support import Registry, rpc_error

S = run_pb2


async def _list(registry: Registry, user: str, **fields: object) -> registry_pb2.ListRunsResponse:
    request = registry_pb2.ListRunsRequest(user_context=registry.make_context(user), **fields)  # type: ignore[arg-type]
    return await registry.stub.ListRuns(request, timeout=10)


async def _finished_runs(registry: Registry, user: str, count: int) -> list[run_pb2.Run]:
    """``count`` terminal runs of ``user``, oldest first (terminal, so the quota does not interfere)."""
    runs = []
    for _ in range(count):
        run = await registry.create(user)
        runs.append(await registry.transition(run, S.RUN_STATE_CANCELLED))
    return runs


async def test_runs_are_listed_newest_first(registry: Registry) -> None:
    user = new_id("user")
    runs = await _finished_runs(registry, user, 4)

    listed = await _list(registry, user)

    assert [r.run_id for r in listed.runs] == [r.run_id for r in reversed(runs)]
    assert listed.next_page_token == ""


async def test_pages_cover_every_run_once_in_order(registry: Registry) -> None:
    user = new_id("user")
    runs = await _finished_runs(registry, user, 7)

    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        page = await _list(registry, user, page_size=3, page_token=token)
        assert len(page.runs) <= 3
        seen += [r.run_id for r in page.runs]
        pages += 1
        token = page.next_page_token
        if not token:
            break

    assert pages == 3
    assert seen == [r.run_id for r in reversed(runs)]


async def test_a_run_created_between_pages_neither_shifts_nor_repeats_the_rest(registry: Registry) -> None:
    user = new_id("user")
    runs = await _finished_runs(registry, user, 4)
    first = await _list(registry, user, page_size=2)

    await _finished_runs(registry, user, 1)
    second = await _list(registry, user, page_size=2, page_token=first.next_page_token)

    assert [r.run_id for r in second.runs] == [runs[1].run_id, runs[0].run_id]


async def test_an_exactly_full_last_page_has_no_next_token(registry: Registry) -> None:
    user = new_id("user")
    await _finished_runs(registry, user, 2)

    page = await _list(registry, user, page_size=2)

    assert len(page.runs) == 2 and page.next_page_token == ""


async def test_the_default_page_holds_fifty_runs(registry: Registry) -> None:
    user = new_id("user")
    await _finished_runs(registry, user, 51)

    page = await _list(registry, user)

    assert len(page.runs) == 50 and page.next_page_token


async def test_an_oversized_page_is_capped_at_two_hundred(registry: Registry) -> None:
    user = new_id("user")
    await _finished_runs(registry, user, 3)

    page = await _list(registry, user, page_size=100_000)

    assert len(page.runs) == 3


async def test_runs_can_be_filtered_by_thread(registry: Registry) -> None:
    user, thread = new_id("user"), new_id("thread")
    on_thread = await registry.create(user, thread_id=thread)
    await registry.create(user)

    listed = await _list(registry, user, thread_id=thread)

    assert [r.run_id for r in listed.runs] == [on_thread.run_id]


async def test_runs_can_be_filtered_by_state(registry: Registry) -> None:
    user = new_id("user")
    pending = await registry.create(user)
    running = await registry.run_in(user, S.RUN_STATE_RUNNING)

    only_running = await _list(registry, user, state=S.RUN_STATE_RUNNING)
    only_pending = await _list(registry, user, state=S.RUN_STATE_PENDING)

    assert [r.run_id for r in only_running.runs] == [running.run_id]
    assert [r.run_id for r in only_pending.runs] == [pending.run_id]


async def test_a_negative_page_size_is_an_invalid_argument(registry: Registry) -> None:
    error = await rpc_error(_list(registry, new_id("user"), page_size=-1))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "page_size" in (error.details() or "")


@pytest.mark.parametrize(
    "token",
    ["not base64 !!", "e30", "eyJ2IjoxfQ", "eyJ2IjoxLCJ0IjoiMjAyNS0wMS0wMSIsInIiOiJydW5fYSJ9", "x" * 2000],
    ids=["garbage", "empty-object", "no-fields", "naive-time", "too-long"],
)
async def test_a_malformed_page_token_is_an_invalid_argument(registry: Registry, token: str) -> None:
    error = await rpc_error(_list(registry, new_id("user"), page_token=token))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "page_token" in (error.details() or "")


async def test_an_unknown_state_filter_is_an_invalid_argument(registry: Registry) -> None:
    assert (
        await rpc_error(_list(registry, new_id("user"), state=42))
    ).code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_placeholder_thread_filter_is_an_invalid_argument(registry: Registry) -> None:
    error = await rpc_error(_list(registry, new_id("user"), thread_id="undefined"))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "thread_id" in (error.details() or "")
