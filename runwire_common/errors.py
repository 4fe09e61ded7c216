"""Domain errors and their single mapping to gRPC status codes.

Domain code raises these; servicers never build status codes by hand. The
``grpc_errors`` decorators (see ``runwire_common.servicer``) translate them in
one place.
"""

from __future__ import annotations

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


class Aborted(RunwireError):
    """A concurrency conflict the caller resolves by waiting and retrying."""

    code = grpc.StatusCode.ABORTED


class AlreadyExists(RunwireError):
    code = grpc.StatusCode.ALREADY_EXISTS
