"""Domain errors and their single mapping to gRPC status codes.

Domain code raises these; servicers never build status codes by hand. The
``grpc_errors`` decorators (see ``runwire_common.servicer``) translate them in
one place.
"""

from __future__ import annotations

import grpc


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
