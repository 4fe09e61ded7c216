"""Every RPC checks the UserContext first: bad ids are INVALID_ARGUMENT, bad attestation UNAUTHENTICATED."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from types import MappingProxyType

import grpc
import pytest

from runwire.common.v1 import context_pb2, run_pb2
from runwire.registry.v1 import registry_pb2
from runwire_common.attestation import ContextAttestor, generate_key_spec
from runwire_common.ids import new_id
from tests.registry_service.support import Registry, rpc_error

Call = Callable[[Registry, context_pb2.UserContext], Awaitable[object]]


async def _create(registry: Registry, ctx: context_pb2.UserContext) -> object:
    return await registry.stub.CreateRun(
        registry_pb2.CreateRunRequest(user_context=ctx, agent="scripted"), timeout=10
    )


async def _transition(registry: Registry, ctx: context_pb2.UserContext) -> object:
    return await registry.stub.TransitionRun(
        registry_pb2.TransitionRunRequest(user_context=ctx, to_state=run_pb2.RUN_STATE_STARTING), timeout=10
    )


async def _heartbeat(registry: Registry, ctx: context_pb2.UserContext) -> object:
    return await registry.stub.Heartbeat(registry_pb2.HeartbeatRequest(user_context=ctx), timeout=10)


async def _get(registry: Registry, ctx: context_pb2.UserContext) -> object:
    return await registry.stub.GetRun(registry_pb2.GetRunRequest(user_context=ctx), timeout=10)


async def _list(registry: Registry, ctx: context_pb2.UserContext) -> object:
    return await registry.stub.ListRuns(registry_pb2.ListRunsRequest(user_context=ctx), timeout=10)


CALLS: Mapping[str, Call] = MappingProxyType(
    {
        "CreateRun": _create,
        "TransitionRun": _transition,
        "Heartbeat": _heartbeat,
        "GetRun": _get,
        "ListRuns": _list,
    }
)
RUN_SCOPED = ("TransitionRun", "Heartbeat", "GetRun")


def _fields(**overrides: str) -> dict[str, str]:
    fields = {"thread_id": new_id("thread"), "run_id": new_id("run")}
    fields.update(overrides)
    return fields


def _unminted(user_id: str) -> context_pb2.UserContext:
    return context_pb2.UserContext(
        user_id=user_id, request_id=new_id("req"), thread_id=new_id("thread"), run_id=new_id("run")
    )


@pytest.mark.parametrize("rpc", tuple(CALLS))
@pytest.mark.parametrize(
    ("user", "overrides", "field"),
    [
        ("undefined", {}, "user_id"),
        ("   ", {}, "user_id"),
        (None, {"thread_id": "null"}, "thread_id"),
        (None, {"run_id": "placeholder_42"}, "run_id"),
        (None, {"request_id": "temp"}, "request_id"),
    ],
    ids=["placeholder-user", "blank-user", "placeholder-thread", "placeholder-run", "placeholder-request"],
)
async def test_a_placeholder_id_is_an_invalid_argument_naming_the_field(
    registry: Registry, rpc: str, user: str | None, overrides: dict[str, str], field: str
) -> None:
    ctx = registry.make_context(user or new_id("user"), **_fields(**overrides))

    error = await rpc_error(CALLS[rpc](registry, ctx))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"user_context.{field}" in (error.details() or "")


@pytest.mark.parametrize("rpc", RUN_SCOPED)
async def test_a_run_scoped_call_without_a_run_id_is_an_invalid_argument(
    registry: Registry, rpc: str
) -> None:
    ctx = registry.make_context(new_id("user"), thread_id=new_id("thread"))

    error = await rpc_error(CALLS[rpc](registry, ctx))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "user_context.run_id is required" in (error.details() or "")


@pytest.mark.parametrize("rpc", tuple(CALLS))
async def test_an_unattested_context_is_unauthenticated(registry: Registry, rpc: str) -> None:
    ctx = _unminted(new_id("user"))

    error = await rpc_error(CALLS[rpc](registry, ctx))

    assert error.code() == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize("rpc", tuple(CALLS))
async def test_a_context_whose_user_was_swapped_after_minting_is_unauthenticated(
    registry: Registry, rpc: str
) -> None:
    ctx = registry.make_context(new_id("user"), **_fields())
    ctx.user_id = new_id("user")

    error = await rpc_error(CALLS[rpc](registry, ctx))

    assert error.code() == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize("rpc", tuple(CALLS))
async def test_a_context_minted_with_a_foreign_key_is_unauthenticated(registry: Registry, rpc: str) -> None:
    foreign = ContextAttestor.from_spec(generate_key_spec("test"))
    ctx = foreign.mint(_unminted(new_id("user")), ttl_s=600)

    error = await rpc_error(CALLS[rpc](registry, ctx))

    assert error.code() == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize("rpc", tuple(CALLS))
async def test_an_expired_context_is_unauthenticated(registry: Registry, rpc: str) -> None:
    ctx = registry.make_context(new_id("user"), ttl_s=-3600, **_fields())

    error = await rpc_error(CALLS[rpc](registry, ctx))

    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "expired" in (error.details() or "")
