"""A scripted OpenAI-compatible chat-completions server on loopback, for tests.

It speaks the published wire format over real HTTP/1.1 (asyncio streams,
keep-alive, chunked transfer encoding), so the real ``openai`` SDK talks to
it as to any server: a streamed answer is ``data: {chunk}\\n\\n`` events —
content deltas, reasoning deltas, tool-call deltas split across chunks
(``index``, ``id`` and function ``name`` first, then ``arguments``
fragments, several calls interleaved), a final usage chunk when the request
asked for it (``stream_options.include_usage``) — and ``data: [DONE]``.
Errors are answered with their status and an OpenAI-shaped JSON body.

Each test scripts the replies, in order, with :meth:`OpenAIServer.script`;
every request is recorded (:attr:`OpenAIServer.requests`, body parsed), and
the server notices when the client goes away in the middle of an answer
(:attr:`RecordedRequest.disconnected`).

Faults: :class:`Stream` with ``cut_after`` closes the connection in the
middle of the answer (no last chunk of the chunked body), with
``hang_after`` stops sending and holds the connection open; :class:`Hang`
never answers at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

MODEL = "test-model"
COMPLETIONS_PATH = "/v1/chat/completions"


@dataclass(frozen=True)
class Stream:
    """A streamed answer: ``chunks`` (chunk objects without the usage chunk), then usage, then ``[DONE]``."""

    chunks: Sequence[dict[str, Any]]
    usage: tuple[int, int] | None = (11, 7)  # prompt, completion tokens
    delay_s: float = 0.0  # between chunks
    cut_after: int | None = None  # close the connection after this many chunks
    hang_after: int | None = None  # stop sending after this many chunks, keep the connection


@dataclass(frozen=True)
class Error:
    """An error status with an OpenAI-shaped body."""

    status: int
    message: str = "something went wrong"
    type: str = "server_error"
    code: str | None = None
    headers: tuple[tuple[str, str], ...] = (("retry-after-ms", "1"),)


@dataclass(frozen=True)
class Hang:
    """Read the request, then answer nothing until the client gives up."""


Reply = Stream | Error | Hang


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: Any
    raw: bytes
    disconnected: asyncio.Event = field(default_factory=asyncio.Event)


def chunk(
    delta: dict[str, Any] | None = None, *, finish_reason: str | None = None, model: str = MODEL
) -> dict[str, Any]:
    """One ``chat.completion.chunk`` with one choice."""
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion.chunk",
        "created": 1_700_000_000,
        "model": model,
        "choices": [{"index": 0, "delta": delta or {}, "logprobs": None, "finish_reason": finish_reason}],
    }


def text_stream(*pieces: str, reasoning: Iterable[str] = (), model: str = MODEL, **options: Any) -> Stream:
    """An answer streamed as ``pieces`` (reasoning deltas first, if any), ending ``stop``."""
    chunks = [chunk({"role": "assistant", "content": ""}, model=model)]
    chunks += [chunk({"reasoning_content": thought}, model=model) for thought in reasoning]
    chunks += [chunk({"content": piece}, model=model) for piece in pieces]
    chunks.append(chunk(finish_reason="stop", model=model))
    return Stream(chunks, **options)


@dataclass(frozen=True)
class Call:
    """A tool call the scripted model makes: its arguments text is sent in ``fragments``."""

    id: str
    name: str
    fragments: Sequence[str]


def tool_call_stream(*calls: Call, model: str = MODEL, **options: Any) -> Stream:
    """Tool calls streamed in fragments, interleaved across calls, ending ``tool_calls``."""
    chunks = [chunk({"role": "assistant", "content": None}, model=model)]
    for index, call in enumerate(calls):
        head = {
            "index": index,
            "id": call.id,
            "type": "function",
            "function": {"name": call.name, "arguments": ""},
        }
        chunks.append(chunk({"tool_calls": [head]}, model=model))
    longest = max((len(call.fragments) for call in calls), default=0)
    for position in range(longest):
        for index, call in enumerate(calls):
            if position < len(call.fragments):
                fragment = {"index": index, "function": {"arguments": call.fragments[position]}}
                chunks.append(chunk({"tool_calls": [fragment]}, model=model))
    chunks.append(chunk(finish_reason="tool_calls", model=model))
    return Stream(chunks, **options)


def split(text: str, size: int = 5) -> list[str]:
    """``text`` in fragments of ``size`` characters, as a server streams arguments."""
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


class OpenAIServer:
    """See the module docstring. ``async with OpenAIServer() as server: server.base_url``."""

    def __init__(self) -> None:
        self.requests: list[RecordedRequest] = []
        self._replies: deque[Reply] = deque()
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def script(self, *replies: Reply) -> None:
        """Queue the replies to the next requests, in order."""
        self._replies.extend(replies)

    @property
    def pending(self) -> int:
        """Scripted replies not used yet."""
        return len(self._replies)

    def bodies(self) -> list[Any]:
        return [request.body for request in self.requests]

    def log_text(self) -> str:
        """Every request as the server received it, as text (for "never in clear" assertions)."""
        return "\n".join(request.raw.decode("utf-8", "replace") for request in self.requests)

    async def __aenter__(self) -> OpenAIServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._handlers):
            task.cancel()
        if self._handlers:
            await asyncio.wait(self._handlers, timeout=2)
        await self._server.wait_closed()

    # --- HTTP ---

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            while await self._one_request(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._handlers.discard(task)
            writer.transport.abort()

    async def _one_request(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Serve one request; ``False`` when the connection is done."""
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, path, _ = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                name, value = line.split(":", 1)
                headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        try:
            parsed: Any = json.loads(body) if body else None
        except ValueError:
            parsed = None
        request = RecordedRequest(method, path, headers, parsed, head + body)
        self.requests.append(request)
        if method != "POST" or path != COMPLETIONS_PATH:
            await self._error(writer, Error(404, f"no route {method} {path}", "invalid_request_error"))
            return True
        if not self._replies:
            await self._error(writer, Error(500, "the test scripted no reply for this request", headers=()))
            return True
        reply = self._replies.popleft()
        if isinstance(reply, Error):
            await self._error(writer, reply)
            return True
        if isinstance(reply, Hang):
            await self._until_disconnected(reader, request)
            return False
        return await self._stream(reader, writer, request, reply)

    async def _error(self, writer: asyncio.StreamWriter, error: Error) -> None:
        body = json.dumps(
            {"error": {"message": error.message, "type": error.type, "param": None, "code": error.code}}
        ).encode()
        reason = HTTPStatus(error.status).phrase
        extra = "".join(f"{name}: {value}\r\n" for name, value in error.headers)
        writer.write(
            (
                f"HTTP/1.1 {error.status} {reason}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n{extra}\r\n"
            ).encode()
            + body
        )
        await writer.drain()

    async def _until_disconnected(self, reader: asyncio.StreamReader, request: RecordedRequest) -> None:
        """Wait until the client closes its side (it sends nothing while it awaits an answer)."""
        with contextlib.suppress(ConnectionError):
            while await reader.read(1024):
                pass
        request.disconnected.set()

    async def _stream(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        request: RecordedRequest,
        reply: Stream,
    ) -> bool:
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
            b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        )
        watcher = asyncio.create_task(self._until_disconnected(reader, request))
        try:
            events: list[str] = [json.dumps(item) for item in reply.chunks]
            options = request.body.get("stream_options") if isinstance(request.body, dict) else None
            if reply.usage is not None and isinstance(options, dict) and options.get("include_usage"):
                prompt, completion = reply.usage
                usage = {
                    "prompt_tokens": prompt,
                    "completion_tokens": completion,
                    "total_tokens": prompt + completion,
                }
                last = (
                    {**reply.chunks[-1], "choices": [], "usage": usage} if reply.chunks else {"usage": usage}
                )
                events.append(json.dumps(last))
            events.append("[DONE]")
            for sent, data in enumerate(events):
                if reply.cut_after is not None and sent >= reply.cut_after:
                    await writer.drain()
                    writer.transport.abort()  # mid-body: no terminating zero-length chunk
                    return False
                if reply.hang_after is not None and sent >= reply.hang_after:
                    await writer.drain()
                    await watcher
                    return False
                if request.disconnected.is_set():
                    return False
                payload = f"data: {data}\n\n".encode()
                writer.write(f"{len(payload):x}\r\n".encode() + payload + b"\r\n")
                await writer.drain()
                if reply.delay_s:
                    await asyncio.sleep(reply.delay_s)
            writer.write(b"0\r\n\r\n")
            await writer.drain()
        finally:
            if not watcher.done():
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
        return False  # one answer per connection keeps the disconnect watcher simple
