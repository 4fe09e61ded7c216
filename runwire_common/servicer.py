"""The one place where domain errors become gRPC status codes.

Servicer methods are decorated with :func:`unary` or :func:`server_stream`.
A :class:`~runwire_common.errors.RunwireError` aborts the call with its code
and message; anything unexpected is logged with its traceback and reported to
the caller as ``INTERNAL`` without internals.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError

from runwire_common.errors import InvalidArgument, RunwireError, bounded_detail

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Self = TypeVar("Self")

log = logging.getLogger("runwire.servicer")


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and details a caller gets for ``exc``.

    For results reported inside a stream (a refused item that does not end
    the call) as well as for aborts. An unexpected error is logged with its
    traceback here and becomes ``INTERNAL`` without internals.
    """
    if isinstance(exc, RunwireError):
        return exc.code, bounded_detail(exc.message)
    log.exception("unhandled error in RPC", exc_info=exc)
    return grpc.StatusCode.INTERNAL, "internal error"


def read_failure(exc: Exception, *, message: str) -> Exception:
    """The error a stream ends with when reading its next request raised ``exc``.

    A request that does not parse (the stream's ``message`` type) is the
    caller's fault: ``INVALID_ARGUMENT`` rather than an internal error.
    """
    if isinstance(exc, DecodeError):
        return InvalidArgument(f"a {message} could not be parsed")
    return exc


async def _abort(context: grpc.aio.ServicerContext[Any, Any], exc: BaseException) -> None:
    code, details = status_of(exc)
    await context.abort(code, details)


def unary(
    method: Callable[[Self, Req, grpc.aio.ServicerContext[Req, Resp]], Awaitable[Resp]],
) -> Callable[[Self, Req, grpc.aio.ServicerContext[Req, Resp]], Awaitable[Resp]]:
    @functools.wraps(method)
    async def wrapper(self: Self, request: Req, context: grpc.aio.ServicerContext[Req, Resp]) -> Resp:
        try:
            return await method(self, request, context)
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception as exc:
            await _abort(context, exc)
            raise  # unreachable: abort raises

    return wrapper


def server_stream(
    method: Callable[[Self, Req, grpc.aio.ServicerContext[Req, Resp]], AsyncIterator[Resp]],
) -> Callable[[Self, Req, grpc.aio.ServicerContext[Req, Resp]], AsyncIterator[Resp]]:
    @functools.wraps(method)
    async def wrapper(
        self: Self, request: Req, context: grpc.aio.ServicerContext[Req, Resp]
    ) -> AsyncIterator[Resp]:
        try:
            async for item in method(self, request, context):
                yield item
        except (asyncio.CancelledError, grpc.aio.AbortError, GeneratorExit):
            raise
        except Exception as exc:  # noqa: BLE001 - mapped in one place
            await _abort(context, exc)

    return wrapper
