"""An internal service calling Runwire over gRPC, with grpc.aio and the committed stubs.

It starts an ``assistant`` run for a user (on a new thread), follows the run's
events through the bridge's ``Subscribe`` until its terminal event, then lists
the user's runs. The services trust the user's identity because the caller
attests it with the cluster's attestation key (``RUNWIRE_ATTESTATION_KEYS``,
the same variable the services read). Where the key and the addresses come
from is in docs/grpc.md.

    export RUNWIRE_ATTESTATION_KEYS=...
    python examples/python/internal_caller.py --user alice \\
        --execution 127.0.0.1:45305 --bridge 127.0.0.1:37471 --registry 127.0.0.1:41613
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing

import grpc

from runwire.bridge.v1 import bridge_pb2, bridge_pb2_grpc
from runwire.common.v1 import context_pb2, event_pb2, run_pb2
from runwire.execution.v1 import execution_pb2, execution_pb2_grpc
from runwire.registry.v1 import registry_pb2, registry_pb2_grpc
from runwire_common.attestation import ContextAttestor
from runwire_common.ids import new_id

TERMINAL = frozenset({"agent_completed", "agent_error", "agent_cancelled", "agent_death"})
# A subscription ended with one of these is resumed from the last event seen:
# the bridge replica is draining or restarting, or this reader fell behind.
RESUMABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED})
CALL_TIMEOUT_S = 10.0

Mint = Callable[[], context_pb2.UserContext]


def channel(target: str, service: str) -> grpc.aio.Channel:
    """A channel that retries calls refused with UNAVAILABLE (a replica draining or restarting)."""
    retry = {
        "maxAttempts": 4,
        "initialBackoff": "0.2s",
        "maxBackoff": "2s",
        "backoffMultiplier": 2,
        "retryableStatusCodes": ["UNAVAILABLE"],
    }
    config = {"methodConfig": [{"name": [{"service": service}], "retryPolicy": retry}]}
    return grpc.aio.insecure_channel(target, options=[("grpc.service_config", json.dumps(config))])


def minter(keys: str, user_id: str, *, ttl_s: float = 60) -> Mint:
    """Mint a fresh, short-lived attested context for ``user_id``, one per call."""
    attestor = ContextAttestor.from_spec(keys)

    def mint() -> context_pb2.UserContext:
        ctx = context_pb2.UserContext(user_id=user_id, request_id=new_id("req"))
        return attestor.mint(ctx, ttl_s=ttl_s)

    return mint


async def current_cursor(bridge: bridge_pb2_grpc.BridgeServiceAsyncStub, mint: Mint) -> str:
    """A cursor at the end of the user's event log: every later event comes after it."""
    call = bridge.Subscribe(bridge_pb2.SubscribeRequest(user_context=mint()), timeout=CALL_TIMEOUT_S)
    try:
        async for item in call:  # live only (no `after`): replay_complete comes first
            return item.replay_complete.resume_after
    finally:
        call.cancel()
    raise RuntimeError("the bridge ended the subscription without a cursor")


async def follow(
    bridge: bridge_pb2_grpc.BridgeServiceAsyncStub, mint: Mint, *, after: str
) -> AsyncGenerator[event_pb2.RunEvent, None]:
    """The user's events after ``after``, in order; resumes where it left off when the stream ends."""
    cursor = after
    while True:
        # No deadline: the stream lasts as long as we read. A fresh context per (re)subscription.
        call = bridge.Subscribe(bridge_pb2.SubscribeRequest(user_context=mint(), after=cursor))
        try:
            async for item in call:
                if item.HasField("gap"):
                    print(f"warning: events after {cursor} are no longer retained", file=sys.stderr)
                elif item.HasField("event"):
                    cursor = item.event.event_id
                    yield item.event
        except grpc.aio.AioRpcError as exc:
            if exc.code() not in RESUMABLE:
                raise
            print(f"subscription ended ({exc.code().name}); resuming after {cursor}", file=sys.stderr)
        finally:
            call.cancel()
        await asyncio.sleep(0.5)


async def run_example(
    *, user: str, keys: str, execution: str, bridge: str, registry: str, message: str
) -> str:
    """Start a run, print its events, list the user's runs; return the run's terminal event type."""
    mint = minter(keys, user)
    async with (
        channel(execution, "runwire.execution.v1.ExecutionService") as execution_channel,
        channel(bridge, "runwire.bridge.v1.BridgeService") as bridge_channel,
        channel(registry, "runwire.registry.v1.RegistryService") as registry_channel,
    ):
        executions = execution_pb2_grpc.ExecutionServiceStub(execution_channel)
        events = bridge_pb2_grpc.BridgeServiceStub(bridge_channel)
        runs = registry_pb2_grpc.RegistryServiceStub(registry_channel)

        # Take the cursor before starting the run, so none of its events can be missed.
        cursor = await current_cursor(events, mint)
        request = execution_pb2.StartRunRequest(
            user_context=mint(),  # no thread_id: the run starts a new thread
            agent="assistant",
            input_json=json.dumps({"message": message}),
        )
        run = (await executions.StartRun(request, timeout=CALL_TIMEOUT_S)).run
        print(f"run {run.run_id} started on thread {run.thread_id}")

        ending = ""
        async with aclosing(follow(events, mint, after=cursor)) as stream:
            async for event in stream:
                if event.run_id != run.run_id:
                    continue  # the user's other runs share the stream
                print(f"[{event.seq:>3}] {event.type:<16} {event.payload_json}")
                if event.type in TERMINAL:
                    ending = event.type
                    break

        listing = registry_pb2.ListRunsRequest(user_context=mint(), page_size=10)
        page = await runs.ListRuns(listing, timeout=CALL_TIMEOUT_S)
        print(f"{user}'s latest runs:")
        for listed in page.runs:
            state = run_pb2.RunState.Name(listed.state).removeprefix("RUN_STATE_").lower()
            print(f"  {listed.run_id}  {listed.agent:<10} {state:<10} {listed.thread_id}")
        return ending


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--user", required=True, help="the user the run is for")
    parser.add_argument("--execution", default=os.environ.get("RUNWIRE_EXECUTION_ADDRESS"))
    parser.add_argument("--bridge", default=os.environ.get("RUNWIRE_BRIDGE_ADDRESS"))
    parser.add_argument("--registry", default=os.environ.get("RUNWIRE_REGISTRY_ADDRESS"))
    parser.add_argument("--message", default="what is 12 * (3 + 4)?")
    args = parser.parse_args()
    keys = os.environ.get("RUNWIRE_ATTESTATION_KEYS")
    if not (keys and args.execution and args.bridge and args.registry):
        parser.error("set RUNWIRE_ATTESTATION_KEYS and give --execution, --bridge and --registry")
    try:
        ending = asyncio.run(
            run_example(
                user=args.user,
                keys=keys,
                execution=args.execution,
                bridge=args.bridge,
                registry=args.registry,
                message=args.message,
            )
        )
    except grpc.aio.AioRpcError as exc:
        print(f"error: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    return 0 if ending == "agent_completed" else 1


if __name__ == "__main__":
    sys.exit(main())
