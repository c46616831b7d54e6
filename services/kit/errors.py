"""Typed errors a handler raises at the point of knowledge; the kit's interceptor turns each into
a gRPC status (with google.rpc details) exactly once."""
from __future__ import annotations

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status


class Error(Exception):
    code = grpc.StatusCode.INTERNAL

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def details(self) -> list:
        return []

    def to_status(self) -> grpc.Status:
        status = status_pb2.Status(code=self.code.value[0], message=self.message)
        for detail in self.details():
            status.details.add().Pack(detail)
        return rpc_status.to_status(status)


class InvalidArgument(Error):
    """Bad input: names each offending field (google.rpc.BadRequest)."""
    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, field: str, description: str, *more: tuple[str, str]):
        self.violations = [(field, description), *more]
        super().__init__("; ".join(f"{f}: {d}" for f, d in self.violations))

    def details(self) -> list:
        return [error_details_pb2.BadRequest(field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=f, description=d)
            for f, d in self.violations
        ])]


class NotFound(Error):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(Error):
    code = grpc.StatusCode.ALREADY_EXISTS


class Unauthenticated(Error):
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(Error):
    code = grpc.StatusCode.PERMISSION_DENIED


class FailedPrecondition(Error):
    code = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhausted(Error):
    """The caller has used up a quota (too many at once); trying again later helps."""
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(Error):
    """A dependency cannot answer now (down, breaker open, deadline). Services with a fallback
    catch it; otherwise the caller sees UNAVAILABLE and may retry."""
    code = grpc.StatusCode.UNAVAILABLE


def field_violations(error: grpc.aio.AioRpcError | grpc.RpcError) -> dict[str, str]:
    """The BadRequest field violations carried by a failed call (for clients and tests)."""
    status = rpc_status.from_call(error)
    found = {}
    for detail in status.details if status else []:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            found.update({v.field: v.description for v in bad.field_violations})
    return found

