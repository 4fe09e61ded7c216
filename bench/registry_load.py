"""Registry throughput: whole run lifecycles through real gRPC calls.

``callers`` concurrent callers (each a distinct user, so the per-user quota of
live runs never refuses them) each loop for ``duration_s``: ``CreateRun`` on a
fresh thread, then ``TransitionRun`` to ``starting``, ``running``,
``completing`` and ``completed`` — the five registry writes the execution
service makes for every run. Reported: completed lifecycles per second
(``runs_per_s``), registry RPCs per second, p50/p99 of ``CreateRun`` and of
``TransitionRun``, errors by status code, and the registry's CPU seconds.

Contexts are attested with the cluster's key, as ``runwire context mint`` does.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import grpc

from bench import procstats
from bench.stats import latency_summary_ms
from runwire.common.v1 import context_pb2, run_pb2
from runwire.registry.v1 import registry_pb2, registry_pb2_grpc
from runwire_common.attestation import ContextAttestor
from runwire_common.ids import new_id

LIFECYCLE = (
    run_pb2.RUN_STATE_STARTING,
    run_pb2.RUN_STATE_RUNNING,
    run_pb2.RUN_STATE_COMPLETING,
    run_pb2.RUN_STATE_COMPLETED,
)
RESULT_JSON = '{"steps":18,"tool_calls":0,"tool_errors":0}'


@dataclass
class _Tally:
    runs: int = 0
    rpcs: int = 0
    create_s: list[float] = field(default_factory=list)
    transition_s: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)


async def _caller(
    stub: registry_pb2_grpc.RegistryServiceAsyncStub,
    attestor: ContextAttestor,
    input_json: str,
    deadline: float,
    tally: _Tally,
) -> None:
    identity = attestor.mint(context_pb2.UserContext(user_id=new_id("user")), ttl_s=3600)
    while time.monotonic() < deadline:
        ctx = context_pb2.UserContext()
        ctx.CopyFrom(identity)
        ctx.thread_id = new_id("thread")
        ctx.request_id = new_id("req")
        try:
            started = time.monotonic()
            created = await stub.CreateRun(
                registry_pb2.CreateRunRequest(
                    user_context=ctx, agent="scripted", input_json=input_json, executor_id="bench"
                ),
                timeout=30,
            )
            tally.create_s.append(time.monotonic() - started)
            tally.rpcs += 1
            ctx.run_id = created.run.run_id
            for state in LIFECYCLE:
                ctx.request_id = new_id("req")
                done = state in (run_pb2.RUN_STATE_COMPLETING, run_pb2.RUN_STATE_COMPLETED)
                started = time.monotonic()
                await stub.TransitionRun(
                    registry_pb2.TransitionRunRequest(
                        user_context=ctx, to_state=state, result_json=RESULT_JSON if done else ""
                    ),
                    timeout=30,
                )
                tally.transition_s.append(time.monotonic() - started)
                tally.rpcs += 1
        except grpc.aio.AioRpcError as exc:
            tally.errors[exc.code().name] += 1
            await asyncio.sleep(0.01)
            continue
        tally.runs += 1


async def measure_registry(
    address: str,
    attestation_keys: str,
    registry_pid: int,
    *,
    callers: int,
    duration_s: float,
    input_json: str,
) -> dict[str, Any]:
    """Drive the registry at ``address`` for ``duration_s``; return the figures."""
    attestor = ContextAttestor.from_spec(attestation_keys)
    tally = _Tally()
    async with grpc.aio.insecure_channel(address) as channel:
        stub = registry_pb2_grpc.RegistryServiceStub(channel)
        # Warm-up: one lifecycle, so table creation and connection set-up are not timed.
        await _caller(stub, attestor, input_json, time.monotonic() + 0.001, _Tally())
        cpu0 = procstats.cpu_seconds(registry_pid)
        started = time.monotonic()
        deadline = started + duration_s
        await asyncio.gather(*(_caller(stub, attestor, input_json, deadline, tally) for _ in range(callers)))
        elapsed = time.monotonic() - started
        cpu = procstats.cpu_seconds(registry_pid) - cpu0
    return {
        "callers": callers,
        "duration_s": round(elapsed, 3),
        "runs": tally.runs,
        "runs_per_s": round(tally.runs / elapsed, 1),
        "rpcs_per_s": round(tally.rpcs / elapsed, 1),
        "create_latency": latency_summary_ms(tally.create_s),
        "transition_latency": latency_summary_ms(tally.transition_s),
        "errors": dict(tally.errors),
        "registry_cpu_s": round(cpu, 3),
        "registry_peak_rss_kb": procstats.peak_rss_kb(registry_pid),
    }
