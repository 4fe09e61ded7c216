"""Domain errors and their single mapping to gRPC status codes.

Domain code raises these; servicers never build status codes by hand. The
``grpc_errors`` decorators (see ``runwire_common.servicer``) translate them in
one place.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

import grpc

# The one cap on error details: status details travel in HTTP/2 headers (8 KiB by
# default) and error messages reach end users, and both may echo user input. Every
# service and the gateway cut details (and texts recorded as a run's error) to this.
MAX_DETAIL_CHARS = 300


def bounded_detail(message: str) -> str:
    """``message``, cut to :data:`MAX_DETAIL_CHARS` (with "…" when it was longer)."""
    if len(message) <= MAX_DETAIL_CHARS:
        return message
    return message[: MAX_DETAIL_CHARS - 1] + "…"


class RunwireError(Exception):
    """Base of every error that is meant to reach a caller."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(RunwireError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class Unauthenticated(RunwireError):
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(RunwireError):
    code = grpc.StatusCode.PERMISSION_DENIED


class NotFound(RunwireError):
    code = grpc.StatusCode.NOT_FOUND


class FailedPrecondition(RunwireError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhausted(RunwireError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(RunwireError):
    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(RunwireError):
    """The work was not done within the time its caller gave it (a call's deadline, a start's ``timeout_ms``)."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Aborted(RunwireError):
    """A concurrency conflict the caller resolves by waiting and retrying."""

    code = grpc.StatusCode.ABORTED


class AlreadyExists(RunwireError):
    code = grpc.StatusCode.ALREADY_EXISTS


# Client side: the domain error for a status a peer answered (a failed call, or a code in a stream).
_ERRORS_BY_CODE: Mapping[grpc.StatusCode, type[RunwireError]] = MappingProxyType(
    {
        grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
        grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
        grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
        grpc.StatusCode.NOT_FOUND: NotFound,
        grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
        grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
        grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
        grpc.StatusCode.ABORTED: Aborted,
        grpc.StatusCode.UNAVAILABLE: Unavailable,
        grpc.StatusCode.DEADLINE_EXCEEDED: Unavailable,
        grpc.StatusCode.CANCELLED: Unavailable,
    }
)

_STATUS_BY_NUMBER: Mapping[int, grpc.StatusCode] = MappingProxyType(
    {status.value[0]: status for status in grpc.StatusCode}
)


def map_rpc_error(exc: grpc.aio.AioRpcError, *, peer: str) -> RunwireError:
    """The domain error for a failed call to ``peer``; unknown codes become INTERNAL."""
    return _error_for(exc.code(), exc.details() or "", peer=peer)


def status_code(number: int) -> grpc.StatusCode:
    """The status code whose number is ``number`` (as a stream's answer carries it); UNKNOWN if none."""
    return _STATUS_BY_NUMBER.get(number, grpc.StatusCode.UNKNOWN)


def error_for_code(code: int, details: str, *, peer: str) -> RunwireError:
    """The domain error for a status ``code`` (a number) answered by ``peer`` inside a stream."""
    return _error_for(status_code(code), details, peer=peer)


def _error_for(code: grpc.StatusCode, details: str, *, peer: str) -> RunwireError:
    error_class = _ERRORS_BY_CODE.get(code)
    if error_class is None:
        return RunwireError(f"{peer} failed")
    if error_class is Unavailable:
        return Unavailable(f"{peer} is unavailable ({code.name.lower()})")
    return error_class(details or f"{peer}: {code.name.lower()}")
