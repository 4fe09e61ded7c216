"""Human in the loop: a run asks its owner and waits for the answer.

:class:`InputWaiter` implements :class:`~execution_service.sdk.InputPort`
for one run (``ctx.ask``) and the dispatcher's approvals. Asking is three
steps, in this order: the registry records the request and moves the run to
``waiting`` (so an answer can be accepted from the moment the owner can see
the question), the ``input_required`` event is queued, then the run waits.

The answer may come through any execution replica (``RespondRun``): it is
validated there (:func:`answer_problem`) and recorded in the registry, which
moves the run back to ``running``. When the replica that runs the run took
the call, it hands the answer over at once (:meth:`InputWaiter.deliver`);
otherwise the waiting run finds it by polling the registry every
``poll_s``, which also tells it when the run was ended elsewhere (a cancel
through another replica). No answer within ``input_timeout_s`` ends the run
in ``timeout`` (error code ``input_timeout``).

Time spent waiting is kept apart (:attr:`InputWaiter.waited_s`) so the
engine does not count it against the run's execution timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from execution_service.emitter import RunEmitter
from execution_service.peers import RegistryPort
from execution_service.redaction import redact
from execution_service.schemas import compile_schema, schema_problem, thaw
from execution_service.sdk import AgentFailure, Cancellation, RunCancelled
from runwire.common.v1 import context_pb2, run_pb2
from runwire_common import names
from runwire_common.errors import FailedPrecondition, InvalidArgument, RunwireError
from runwire_common.ids import new_id

INPUT_TIMEOUT_CODE = "input_timeout"
MAX_PROMPT_CHARS = 4000
MAX_ANSWER_CHARS = 64 * 1024

# What an answer looks like when the question did not say.
DEFAULT_SCHEMAS: Mapping[int, Mapping[str, Any]] = MappingProxyType(
    {
        run_pb2.INPUT_KIND_INPUT: {
            "type": "object",
            "properties": {"text": {"type": "string"}},
            "required": ["text"],
        },
        run_pb2.INPUT_KIND_APPROVAL: {
            "type": "object",
            "properties": {"approved": {"type": "boolean"}, "reason": {"type": "string"}},
            "required": ["approved"],
        },
    }
)


def parse_answer(request_id: str, response_json: str) -> dict[str, Any]:
    """The answer of a ``RespondRun`` call as a JSON object, or :class:`InvalidArgument`."""
    if not request_id:
        raise InvalidArgument("request_id is required")
    if len(response_json) > MAX_ANSWER_CHARS:
        raise InvalidArgument(f"response_json must be at most {MAX_ANSWER_CHARS} characters")
    try:
        answer = json.loads(response_json)
    except ValueError:
        raise InvalidArgument("response_json must be a JSON object") from None
    if not isinstance(answer, dict):
        raise InvalidArgument("response_json must be a JSON object")
    return answer


def answer_problem(request: run_pb2.InputRequest, answer: Any) -> str | None:
    """Why ``answer`` does not answer ``request`` (``None`` when it does)."""
    if not isinstance(answer, dict):
        return "response must be a JSON object"
    schema = (
        json.loads(request.schema_json)
        if request.schema_json
        else DEFAULT_SCHEMAS.get(request.kind, DEFAULT_SCHEMAS[run_pb2.INPUT_KIND_INPUT])
    )
    try:
        validator = compile_schema(schema, owner="the question")
    except ValueError as exc:  # stored by an agent; checked when asked, so only a foreign writer
        return str(exc)
    problem = schema_problem(validator, answer)
    return None if problem is None else f"response does not match the question's schema: {problem}"


@dataclass(frozen=True)
class WaitConfig:
    """How long a run waits for its owner, and how often it looks for an answer given elsewhere."""

    input_timeout_s: float = 600.0
    poll_s: float = 0.5


def _ignore_run(run: run_pb2.Run) -> None:
    """What a closed waiter does when it learns that the run ended elsewhere: nothing."""


def _ignore_reason(reason: str) -> None:
    """What a closed waiter does when an answer is overdue: nothing."""


class InputWaiter:
    """Asks one run's owner, and waits in ``waiting`` until the answer comes."""

    def __init__(
        self,
        *,
        registry: RegistryPort,
        context: Callable[[], context_pb2.UserContext],
        emitter: RunEmitter,
        cancellation: Cancellation,
        config: WaitConfig,
        on_ended: Callable[[run_pb2.Run], None],
        on_expired: Callable[[str], None],
        log: logging.LoggerAdapter,  # type: ignore[type-arg]
    ) -> None:
        self._registry = registry
        self._context = context
        self._emitter = emitter
        self._cancellation = cancellation
        self._config = config
        self._on_ended = on_ended
        self._on_expired = on_expired
        self._log = log
        self._answers: dict[str, asyncio.Future[str]] = {}
        self._waited_s = 0.0
        self._waiting_since: float | None = None

    def close(self) -> None:
        """The run is over: forget the engine's callbacks, so nothing here keeps the engine alive."""
        self._on_ended = _ignore_run
        self._on_expired = _ignore_reason

    @property
    def waiting(self) -> bool:
        return self._waiting_since is not None

    @property
    def waited_s(self) -> float:
        """Seconds this run has spent waiting for its owner so far (the current wait included)."""
        current = 0.0 if self._waiting_since is None else time.monotonic() - self._waiting_since
        return self._waited_s + current

    # --- sdk.InputPort ---

    async def ask(self, prompt: str, *, schema: Mapping[str, Any] | None = None) -> Any:
        return await self._request(run_pb2.INPUT_KIND_INPUT, prompt, schema=schema)

    # --- the dispatcher's approvals ---

    async def approve(
        self, *, tool_name: str, call_id: str, parameters: Mapping[str, Any]
    ) -> tuple[bool, str]:
        """Ask the owner to approve a tool call: ``(approved, reason)``."""
        answer = await self._request(
            run_pb2.INPUT_KIND_APPROVAL,
            f"Allow the tool {tool_name!r} to run with these parameters?",
            tool_name=tool_name,
            call_id=call_id,
            parameters=parameters,
        )
        reason = answer.get("reason")
        return bool(answer["approved"]), reason if isinstance(reason, str) else ""

    # --- RespondRun on this replica ---

    def deliver(self, request_id: str, response_json: str) -> bool:
        """Hand over an answer the registry recorded; ``False`` if this run does not wait for it."""
        future = self._answers.get(request_id)
        if future is None or future.done():
            return False
        future.set_result(response_json)
        return True

    # --- the wait ---

    async def _request(
        self,
        kind: run_pb2.InputKind.ValueType,
        prompt: str,
        *,
        schema: Mapping[str, Any] | None = None,
        tool_name: str = "",
        call_id: str = "",
        parameters: Mapping[str, Any] | None = None,
    ) -> Any:
        if self._cancellation.requested:
            raise RunCancelled(self._cancellation.reason)
        if not isinstance(prompt, str) or not prompt.strip():
            raise AgentFailure("a question to the user needs a prompt", code="invalid_question")
        document = thaw(schema if schema is not None else DEFAULT_SCHEMAS[kind])
        try:
            compile_schema(document, owner="the question")
        except ValueError as exc:
            raise AgentFailure(str(exc), code="invalid_question") from None
        prompt = prompt[:MAX_PROMPT_CHARS]
        request = run_pb2.InputRequest(
            request_id=new_id("input"),
            kind=kind,
            prompt=prompt,
            schema_json=json.dumps(document),
            tool_name=tool_name,
            call_id=call_id,
            parameters_json=json.dumps(redact(dict(parameters))) if parameters is not None else "",
        )
        request.expires_at.FromSeconds(int(time.time() + self._config.input_timeout_s))
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._answers[request.request_id] = future
        try:
            await self._open(request)
            payload: dict[str, Any] = {
                "request_id": request.request_id,
                "kind": names.INPUT_KIND_NAMES[kind],
                "prompt": prompt,
                "schema": document,
            }
            if kind == run_pb2.INPUT_KIND_APPROVAL:
                payload.update(
                    tool_name=tool_name, parameters=redact(dict(parameters or {})), call_id=call_id
                )
            self._waiting_since = time.monotonic()
            await self._emitter.emit_reserved(names.INPUT_REQUIRED, payload)
            self._log.info("waiting for the user", extra={"request_id": request.request_id})
            response_json = await self._wait(request.request_id, future)
        finally:
            self._answers.pop(request.request_id, None)
            if self._waiting_since is not None:
                self._waited_s += time.monotonic() - self._waiting_since
                self._waiting_since = None
        return json.loads(response_json)

    async def _open(self, request: run_pb2.InputRequest) -> None:
        """Record the question and move the run to ``waiting``."""
        try:
            await self._registry.request_input(self._context(), request)
        except FailedPrecondition:
            run = await self._registry.get_run(self._context())
            if run.state in names.TERMINAL_STATES:
                self._on_ended(run)
                raise RunCancelled(run.error.message or names.state_name(run.state)) from None
            raise

    async def _wait(self, request_id: str, future: asyncio.Future[str]) -> str:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._config.input_timeout_s
        stop = asyncio.ensure_future(self._cancellation.wait())
        try:
            while True:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    reason = f"no answer to the run's question within {self._config.input_timeout_s:g} s"
                    self._on_expired(reason)
                    raise RunCancelled(reason)
                await asyncio.wait(
                    (future, stop),
                    timeout=min(self._config.poll_s, remaining),
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if future.done():
                    return future.result()
                if stop.done():
                    raise RunCancelled(self._cancellation.reason)
                answer = await self._poll(request_id)
                if answer is not None:
                    return answer
        finally:
            stop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await stop

    async def _poll(self, request_id: str) -> str | None:
        """The answer recorded through another replica, if any; notices a run ended elsewhere."""
        try:
            request, run = await self._registry.get_input(self._context(), request_id)
        except RunwireError as exc:
            self._log.warning("could not look for the user's answer", extra={"error": exc.message})
            return None
        if request.response_json:
            return request.response_json
        if run.state in names.TERMINAL_STATES:
            self._on_ended(run)
            raise RunCancelled(run.error.message or names.state_name(run.state))
        return None
