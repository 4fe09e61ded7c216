"""The baseline: the smallest chain built from Runwire's libraries doing the same job.

Two processes, started like Runwire's services:

* ``python -m bench.baseline grpc`` — a bare ``grpc.aio`` server with one
  server-streaming method. It plays the scripted agent: for a request carrying
  a ``run.start`` input it emits an ``agent_started`` event, one
  ``partial_result`` per ``{"partial": …}`` step (sleeping for ``sleep_ms``
  steps), then ``agent_completed`` — JSON frames with the same envelope fields,
  payloads and therefore sizes as Runwire's, each stamped with its creation
  time;
* ``python -m bench.baseline ws --grpc-target HOST:PORT`` — a bare
  ``websockets`` server that sends a ``connected`` frame, forwards each
  ``run.start`` over one server-stream call and writes every streamed frame to
  the socket (``run.accepted`` when the stream's first message arrives).

Both run on uvloop, with WebSocket compression off and the services' garbage
collector settings (:func:`runwire_common.process.tune_garbage_collector`), as
the services do. There
is no authentication, registry, event log or ownership check: the ratio of a
Runwire figure to the baseline's is what that machinery costs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

METHOD = "/bench.Baseline/Run"


def _write_ready(path: Path, port: int) -> None:
    """Write the ready file atomically, so the launcher never reads half of it."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"port": port}))
    tmp.replace(path)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _event(kind: str, seq: int, run: dict[str, str], payload: str) -> bytes:
    ms = int(time.time() * 1000)
    return (
        f'{{"type":"{kind}","event_id":"{ms}-{seq - 1}","seq":{seq},"run_id":"{run["run_id"]}",'
        f'"thread_id":"{run["thread_id"]}","user_id":"{run["user_id"]}","agent":"scripted",'
        f'"timestamp":"{_now()}","payload":{payload}}}'
    ).encode()


async def _run(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[bytes]:
    """Play a scripted run: accepted record, then the events."""
    req = json.loads(request)
    script: dict[str, Any] = req["input"]
    started = time.monotonic()
    ids = {
        "run_id": f"run_{uuid.uuid4().hex}",
        "thread_id": f"thread_{uuid.uuid4().hex}",
        "user_id": req["user_id"],
    }
    now = _now()
    run = {
        **ids,
        "agent": "scripted",
        "state": "pending",
        "created_at": now,
        "updated_at": now,
        "started_at": None,
        "finished_at": None,
        "error": None,
        "result": None,
        "input": script,
        "cancel_requested": False,
    }
    yield json.dumps(run, separators=(",", ":")).encode()
    seq = 1
    started_payload = {"message": "agent scripted started", "input": script}
    yield _event("agent_started", seq, ids, json.dumps(started_payload, separators=(",", ":")))
    index = 0
    for step in script.get("steps", []):
        if "sleep_ms" in step:
            await asyncio.sleep(step["sleep_ms"] / 1000)
        elif "partial" in step:
            seq += 1
            payload = json.dumps({"content": step["partial"], "index": index}, separators=(",", ":"))
            yield _event("partial_result", seq, ids, payload)
            index += 1
    done = {
        "status": "completed",
        "result": {"steps": len(script.get("steps", [])), "tool_calls": 0, "tool_errors": 0},
        "final_response": script.get("result", ""),
        "duration_ms": int((time.monotonic() - started) * 1000),
    }
    yield _event("agent_completed", seq + 1, ids, json.dumps(done, separators=(",", ":")))


async def serve_grpc(ready_file: Path) -> None:
    server = grpc.aio.server()
    handler: grpc.RpcMethodHandler[bytes, bytes] = grpc.unary_stream_rpc_method_handler(_run)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("bench.Baseline", {"Run": handler}),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    await asyncio.to_thread(_write_ready, ready_file, port)
    await server.wait_for_termination()


async def serve_ws(ready_file: Path, grpc_target: str) -> None:
    channel = grpc.aio.insecure_channel(grpc_target)
    call: grpc.aio.UnaryStreamMultiCallable[bytes, bytes] = channel.unary_stream(METHOD)

    async def forward(ws: ServerConnection, user: str, frame: dict[str, Any]) -> None:
        request = json.dumps({"input": frame["input"], "user_id": user}).encode()
        first = True
        async for item in call(request, timeout=300):
            if first:
                reply = f'{{"type":"run.accepted","id":{json.dumps(frame.get("id"))},"run":{item.decode()}}}'
                await ws.send(reply)
                first = False
            else:
                await ws.send(item.decode())

    async def handle(ws: ServerConnection) -> None:
        user = f"user_{uuid.uuid4().hex}"
        tasks: set[asyncio.Task[None]] = set()
        await ws.send(
            json.dumps({"type": "connected", "connection_id": f"conn_{uuid.uuid4().hex}", "user_id": user})
        )
        try:
            async for message in ws:
                frame = json.loads(message)
                if frame.get("type") == "run.start":
                    task = asyncio.create_task(forward(ws, user, frame))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                elif frame.get("type") == "ping":
                    await ws.send(json.dumps({"type": "pong", "id": frame.get("id"), "server_time": _now()}))
        except ConnectionClosed:
            pass
        finally:
            for task in tasks:
                task.cancel()

    async with serve(handle, "127.0.0.1", 0, compression=None, ping_interval=25, max_size=1 << 17) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        await asyncio.to_thread(_write_ready, ready_file, port)
        await server.serve_forever()


class BaselineChain:
    """The two baseline processes; ``start()`` waits until both listen."""

    def __init__(self, work_dir: Path) -> None:
        self._dir = work_dir
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self.ws_port = 0

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.ws_port}/ws"

    @property
    def pids(self) -> dict[str, int]:
        return {f"baseline-{name}": proc.pid for name, proc in self._procs.items()}

    def _launch(self, name: str, *args: str) -> int:
        ready = self._dir / f"baseline-{name}.json"
        ready.unlink(missing_ok=True)
        self._dir.mkdir(parents=True, exist_ok=True)
        with (self._dir / f"baseline-{name}.log").open("ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "bench.baseline", name, "--ready-file", str(ready), *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
            )
        self._procs[name] = proc
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"baseline {name} exited; see {self._dir}/baseline-{name}.log")
            if ready.exists():
                return int(json.loads(ready.read_text())["port"])  # written atomically
            time.sleep(0.05)
        raise RuntimeError(f"baseline {name} did not start")

    def start(self) -> None:
        grpc_port = self._launch("grpc")
        self.ws_port = self._launch("ws", "--grpc-target", f"127.0.0.1:{grpc_port}")

    def stop(self) -> None:
        for proc in reversed(list(self._procs.values())):
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self._procs.clear()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("role", choices=("grpc", "ws"))
    parser.add_argument("--ready-file", type=Path, required=True)
    parser.add_argument("--grpc-target", default="")
    args = parser.parse_args()
    import uvloop

    from runwire_common.process import tune_garbage_collector

    tune_garbage_collector()  # as every service process does
    runner = asyncio.run if os.environ.get("BENCH_BASELINE_LOOP") == "asyncio" else uvloop.run
    try:
        if args.role == "grpc":
            runner(serve_grpc(args.ready_file))
        else:
            runner(serve_ws(args.ready_file, args.grpc_target))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
