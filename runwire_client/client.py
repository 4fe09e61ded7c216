"""The Runwire WebSocket client: requests by ``id``, events exactly once, reconnects that resume.

One :class:`RunwireClient` holds one connection at a time and replaces it
when it is lost: after a restart (1012), overload (1013), a crash or a network
failure it reconnects with exponential backoff and full jitter, passing
``?after=<last event_id>`` so the gateway replays what was missed; the
:class:`~runwire_client.events.EventRouter` drops anything delivered twice.
A 1008 close (the token expired or is no longer accepted) is not retried as
is: with ``get_token`` the client fetches one fresh token and tries once,
otherwise it closes with ``RunwireError("unauthenticated")``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from types import TracebackType
from typing import Any, Literal, Self

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from runwire_client.backoff import Backoff
from runwire_client.connection import Disposition, HandshakeRefused, disposition, open_socket
from runwire_client.errors import RunwireError
from runwire_client.events import Event, EventRouter, is_event
from runwire_client.requests import Frame, PendingRequests, reply_or_raise

State = Literal["idle", "connecting", "open", "reconnecting", "closed"]
TokenSource = Callable[[], Awaitable[str]]
Run = dict[str, Any]

TERMINAL_STATES = frozenset({"completed", "failed", "timeout", "cancelled", "dead"})
# How long a run the registry reports ended may take to announce its terminal event
# (the end is recorded first, then announced): only after this is it taken as lost.
_TERMINAL_EVENT_GRACE_S = 2.0

_log = logging.getLogger(__name__)


class RunwireClient:
    """A connection to the gateway that survives restarts and never loses or repeats an event.

    Use it as ``async with RunwireClient(url, token=jwt) as client:`` (or call
    :meth:`connect` and :meth:`close`). The first connection must succeed —
    :meth:`connect` raises :class:`RunwireError` otherwise; later losses are
    repaired in the background while ``state`` is ``"reconnecting"``.

    ``token`` is the JWT; ``get_token`` an async callable returning a fresh
    one (used when there is no ``token``, and once each time the gateway
    refuses the current one). ``last_event_id`` resumes from a cursor kept
    from an earlier session. ``rand`` and ``sleep`` exist for tests.
    """

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        get_token: TokenSource | None = None,
        last_event_id: str | None = None,
        reconnect_initial_s: float = 0.25,
        reconnect_max_s: float = 10.0,
        open_timeout_s: float = 10.0,
        request_timeout_s: float = 30.0,
        max_in_flight: int = 8,
        max_backlog: int = 10_000,
        rand: Callable[[], float] = random.random,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if token is None and get_token is None:
            raise ValueError("give a token or a get_token callable")
        self.url = url
        self._token = token
        self._get_token = get_token
        self._backoff = Backoff(initial_s=reconnect_initial_s, maximum_s=reconnect_max_s, rand=rand)
        self._sleep = sleep
        self._open_timeout_s = open_timeout_s
        self._request_timeout_s = request_timeout_s
        # The gateway refuses more than 8 requests in flight per connection (resource_exhausted).
        self._slots = asyncio.Semaphore(max_in_flight)
        self._events = EventRouter(last_event_id=last_event_id, max_backlog=max_backlog)
        self._requests = PendingRequests()
        self._socket: ClientConnection | None = None
        self._state: State = "idle"
        self._settled = asyncio.Event()  # set while the state is "open" or "closed"
        self._closing = False
        self._supervisor: asyncio.Task[None] | None = None
        self._after_gap = False  # a gap frame came; the resume it belongs to has not ended yet
        self._checks: set[asyncio.Task[None]] = set()
        self._state_callbacks: list[Callable[[State], None]] = []
        self._gap_callbacks: list[Callable[[dict[str, Any]], None]] = []
        self.error: RunwireError | None = None
        """Why the client closed by itself (``None`` while usable or after :meth:`close`)."""
        self.user_id: str | None = None
        self.connection_id: str | None = None
        self.reconnects = 0
        """Connections opened after the first one."""
        self.replayed = 0
        """Events the gateway replayed at the latest resume (before the client dropped duplicates)."""

    # -- lifetime --------------------------------------------------------------

    @property
    def state(self) -> State:
        return self._state

    @property
    def last_event_id(self) -> str | None:
        """The cursor: the ``event_id`` of the newest event received."""
        return self._events.last_event_id

    async def connect(self) -> None:
        """Open the first connection; raise :class:`RunwireError` when that fails."""
        if self._state != "idle":
            raise RuntimeError("connect() is called once per client")
        self._set_state("connecting")
        try:
            socket, hello = await self._open_first()
        except RunwireError as error:
            self._finish(error)
            raise
        self._adopt(socket, hello)
        self._supervisor = asyncio.create_task(self._keep_connected(socket), name="runwire-client")

    async def close(self) -> None:
        """Close the connection and stop reconnecting; iterators end, waiting requests fail."""
        self._closing = True
        if self._socket is not None:
            await self._socket.close()
        if self._supervisor is not None and not self._supervisor.done():
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        if self._socket is not None:  # adopted while the supervisor was being stopped
            await self._socket.close()
            self._socket = None
        for check in list(self._checks):
            check.cancel()
        await asyncio.gather(*self._checks, return_exceptions=True)
        if self._state != "closed":
            self._finish(None)

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def on_state(self, callback: Callable[[State], None]) -> Callable[[], None]:
        """Call ``callback(state)`` on every state change; returns a function that unsubscribes."""
        self._state_callbacks.append(callback)
        return lambda: self._state_callbacks.remove(callback)

    def on_gap(self, callback: Callable[[dict[str, Any]], None]) -> Callable[[], None]:
        """Call ``callback(gap_frame)`` when the gateway could not replay everything after the cursor.

        Events between ``requested_after`` and ``oldest_event_id`` are lost for
        good; refresh what you show with :meth:`get_run` / :meth:`list_runs`.
        """
        self._gap_callbacks.append(callback)
        return lambda: self._gap_callbacks.remove(callback)

    # -- requests --------------------------------------------------------------

    async def start_run(
        self,
        agent: str,
        input: dict[str, Any],
        *,
        thread_id: str | None = None,
        multitask_strategy: str | None = None,
    ) -> Run:
        """Start a run; returns the run object (``run_id``, ``thread_id``, ``state`` …)."""
        frame: Frame = {"type": "run.start", "agent": agent, "input": input}
        if thread_id is not None:
            frame["thread_id"] = thread_id
        if multitask_strategy is not None:
            frame["multitask_strategy"] = multitask_strategy
        run: Run = (await self._call(frame))["run"]
        return run

    async def cancel_run(self, run_id: str) -> Run:
        run: Run = (await self._call({"type": "run.cancel", "run_id": run_id}))["run"]
        return run

    async def get_run(self, run_id: str) -> Run:
        run: Run = (await self._call({"type": "run.get", "run_id": run_id}))["run"]
        return run

    async def list_runs(
        self,
        *,
        thread_id: str | None = None,
        state: str | None = None,
        limit: int | None = None,
        page_token: str | None = None,
    ) -> tuple[list[Run], str | None]:
        """One page of the user's runs, newest first, and the token of the next page (or None)."""
        frame = _without_none(
            {
                "type": "runs.list",
                "thread_id": thread_id,
                "state": state,
                "limit": limit,
                "page_token": page_token,
            }
        )
        reply = await self._call(frame)
        return reply["runs"], reply.get("next_page_token")

    async def respond(self, run_id: str, request_id: str, response: dict[str, Any]) -> Run:
        """Answer an ``input_required`` event (``request_id`` is from its payload)."""
        frame = {"type": "run.respond", "run_id": run_id, "request_id": request_id, "response": response}
        run: Run = (await self._call(frame))["run"]
        return run

    async def list_threads(
        self, *, limit: int | None = None, page_token: str | None = None
    ) -> tuple[list[dict[str, Any]], str | None]:
        """One page of the user's threads, most recently updated first, and the next page's token."""
        reply = await self._call(
            _without_none({"type": "threads.list", "limit": limit, "page_token": page_token})
        )
        return reply["threads"], reply.get("next_page_token")

    async def get_thread(self, thread_id: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The thread and its conversation so far (messages, oldest first)."""
        reply = await self._call({"type": "thread.get", "thread_id": thread_id})
        return reply["thread"], reply["messages"]

    async def delete_thread(self, thread_id: str) -> None:
        await self._call({"type": "thread.delete", "thread_id": thread_id})

    async def ping(self) -> str:
        """An application-level round trip; returns the gateway's ``server_time``."""
        return str((await self._call({"type": "ping"}))["server_time"])

    async def _call(self, frame: Frame) -> Frame:
        async with self._slots:
            socket = await self._open_socket()
            request_id, reply = self._requests.add()
            try:
                # The id leads the frame, so even a reply to a frame refused unparsed (rate limits) carries it.
                await socket.send(json.dumps({"id": request_id, **frame}))
                async with asyncio.timeout(self._request_timeout_s):
                    answer = await reply
            except ConnectionClosed:
                raise RunwireError(
                    "unavailable", "the connection was lost; the request was not sent"
                ) from None
            except TimeoutError:
                raise RunwireError("timeout", f"no reply within {self._request_timeout_s} s") from None
            finally:
                self._requests.discard(request_id)
        return reply_or_raise(answer)

    async def _open_socket(self) -> ClientConnection:
        """The current connection, waiting (up to the request timeout) while one is being reopened."""
        if self._state == "idle":
            raise RunwireError("unavailable", "not connected: use `async with` or connect() first")
        try:
            await asyncio.wait_for(self._settled.wait(), self._request_timeout_s)
        except TimeoutError:
            raise RunwireError("unavailable", f"not reconnected within {self._request_timeout_s} s") from None
        if self._state == "closed" or self._socket is None:
            raise self.error or RunwireError("unavailable", "the client is closed")
        return self._socket

    # -- events ----------------------------------------------------------------

    async def events(self) -> AsyncIterator[Event]:
        """Every event of the user's runs, each exactly once, in order.

        Events that arrived while no ``events()`` iterator was open (the
        newest ``max_backlog`` of them) come first. Ends when the client is
        closed, raising ``self.error`` if it closed because of one.
        """
        stream = self._events.subscribe()
        try:
            async for event in stream:
                yield event
        finally:
            self._events.unsubscribe(stream)

    async def run_events(self, run_id: str) -> AsyncIterator[Event]:
        """One run's events, exactly once and in ``seq`` order, ending after its terminal event.

        Includes the run's events already received (so it may start after
        :meth:`start_run` returned without missing ``agent_started``). If a
        gap swallowed the run's terminal event (the run ended while the client
        was away and the retained log no longer holds its end), it raises
        ``RunwireError("gap")`` instead of waiting forever; :meth:`get_run`
        then tells how the run ended.
        """
        stream = self._events.subscribe_run(run_id)
        try:
            async for event in stream:
                yield event
        finally:
            self._events.unsubscribe(stream)

    # -- the connection's lifetime -----------------------------------------------

    def _set_state(self, state: State) -> None:
        if state == self._state:
            return
        self._state = state
        if state in ("open", "closed"):
            self._settled.set()
        else:
            self._settled.clear()
        for callback in list(self._state_callbacks):
            _safely(callback, state)

    def _adopt(self, socket: ClientConnection, hello: dict[str, Any]) -> None:
        self._socket = socket
        self.user_id = hello.get("user_id")
        self.connection_id = hello.get("connection_id")
        self._backoff.reset()
        self._set_state("open")

    def _finish(self, error: RunwireError | None) -> None:
        """Closed for good: record why, end every iterator, fail every waiting request."""
        self._closing = True
        self.error = error
        self._socket = None
        self._set_state("closed")
        self._requests.fail_all(error or RunwireError("unavailable", "the client was closed"))
        self._events.close(error)

    async def _token_now(self) -> str:
        if self._token is None:
            self._token = await self._fresh_token()
        return self._token

    async def _fresh_token(self) -> str:
        assert self._get_token is not None
        try:
            self._token = await self._get_token()
        except Exception as exc:  # noqa: BLE001 - any failure of the caller's callback means no token
            raise RunwireError("unauthenticated", f"get_token failed: {exc!r}") from None
        return self._token

    async def _open_first(self) -> tuple[ClientConnection, dict[str, Any]]:
        fetched = self._token is None
        token = await self._token_now()
        try:
            return await open_socket(
                self.url, token, after=self._events.last_event_id, open_timeout_s=self._open_timeout_s
            )
        except RunwireError as error:
            if error.code != "unauthenticated" or self._get_token is None or fetched:
                raise
        return await open_socket(
            self.url,
            await self._fresh_token(),
            after=self._events.last_event_id,
            open_timeout_s=self._open_timeout_s,
        )

    async def _keep_connected(self, socket: ClientConnection) -> None:
        try:
            await self._supervise(socket)
        except Exception as exc:  # noqa: BLE001 - a bug here must close the client, not hang it
            _log.exception("runwire client failed")
            self._finish(RunwireError("internal", f"the client failed: {exc!r}"))

    async def _supervise(self, socket: ClientConnection) -> None:
        """Read the connection; when it ends, reconnect (or close) as its close code says."""
        while True:
            code, reason = await self._read(socket)
            self._socket = None
            self._requests.fail_all(
                RunwireError("unavailable", f"the connection closed ({code} {reason}) before the reply")
            )
            if self._closing:
                return
            needs_token = disposition(code) is Disposition.REAUTHENTICATE
            if needs_token and self._get_token is None:
                self._finish(RunwireError("unauthenticated", reason or "the gateway refused the token"))
                return
            self._set_state("reconnecting")
            opened = await self._reconnect(needs_token=needs_token)
            if opened is None:
                return
            socket, hello = opened
            self.reconnects += 1
            self._adopt(socket, hello)

    async def _read(self, socket: ClientConnection) -> tuple[int | None, str]:
        with contextlib.suppress(ConnectionClosed):
            async for message in socket:
                self._on_message(message)
        return socket.close_code, socket.close_reason or ""

    async def _reconnect(self, *, needs_token: bool) -> tuple[ClientConnection, dict[str, Any]] | None:
        """Open a new connection from the cursor; None when the client closed meanwhile.

        Waits a backoff delay before each attempt, except the one right after
        fetching a fresh token. A token is fetched at most once per loss: a
        gateway that refuses the fresh one too closes the client.
        """
        refreshed = False
        refused = RunwireError("unauthenticated", "the gateway refused the token")
        while not self._closing:
            if needs_token:
                if refreshed or self._get_token is None:
                    self._finish(refused)
                    return None
                try:
                    await self._fresh_token()
                except RunwireError as error:
                    self._finish(error)
                    return None
                refreshed, needs_token = True, False
            else:
                await self._sleep(self._backoff.next_delay())
            if self._stopped():  # close() was called during the wait
                return None
            try:
                return await open_socket(
                    self.url,
                    await self._token_now(),
                    after=self._events.last_event_id,
                    open_timeout_s=self._open_timeout_s,
                )
            except RunwireError as error:
                if error.code == "unauthenticated":
                    needs_token, refused = True, error
                elif isinstance(error, HandshakeRefused) and not error.retryable:
                    self._finish(error)
                    return None
                _log.info("reconnect failed: %s", error)
        return None

    def _stopped(self) -> bool:
        return self._closing

    def _on_message(self, message: str | bytes) -> None:
        try:
            frame = json.loads(message)
        except ValueError:
            return
        if not isinstance(frame, dict):
            return
        if is_event(frame):
            self._events.accept(frame)
        elif self._requests.resolve(frame):
            pass
        elif frame.get("type") == "gap":
            self._after_gap = True
            for callback in list(self._gap_callbacks):
                _safely(callback, frame)
        elif frame.get("type") == "resumed":
            self.replayed = int(frame.get("replayed") or 0)
            if self._after_gap:
                self._after_gap = False
                for run_id in self._events.followed_runs():
                    check = asyncio.create_task(self._settle_after_gap(run_id))
                    self._checks.add(check)
                    check.add_done_callback(self._checks.discard)

    async def _settle_after_gap(self, run_id: str) -> None:
        """End a followed run's iterators if the run ended and its terminal event was lost."""
        try:
            state = (await self.get_run(run_id))["state"]
        except RunwireError:
            return  # reconnecting again: the next resume checks again if it has a gap
        if state not in TERMINAL_STATES:
            return
        await asyncio.sleep(_TERMINAL_EVENT_GRACE_S)
        if not self._events.finished(run_id):
            message = f"run {run_id} ended ({state}) while its events were lost in a gap"
            self._events.end_run(run_id, RunwireError("gap", message))


def _without_none(frame: Frame) -> Frame:
    return {key: value for key, value in frame.items() if value is not None}


def _safely(callback: Callable[[Any], None], argument: Any) -> None:
    """Call a user's callback; its failure is logged, never allowed to stop the client."""
    try:
        callback(argument)
    except Exception:  # noqa: BLE001 - a callback's bug must not break the connection
        _log.exception("runwire client callback %r failed", callback)
