"""The one server interceptor: request id, JSON access log, per-method metrics, the mapping of
kit errors to gRPC statuses, and the inbound call's deadline and identity for outbound calls."""
from __future__ import annotations

import asyncio
import inspect
import logging
import time
import uuid

import grpc
from google.protobuf.message import DecodeError

from . import database, logs, telemetry
from .clients import Inbound, inbound
from .errors import Error, InvalidArgument

log = logging.getLogger("aimesh.rpc")
QUIET_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


class Observe(grpc.aio.ServerInterceptor):
    """`admit(method, context)` runs first in every call and may raise a kit error (tls.admit)."""

    def __init__(self, service: str, admit=None):
        self.service = service
        self.admit = admit or (lambda method, context: None)

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None:
            return None
        method = details.method
        handler = handler._replace(request_deserializer=_tolerant(handler.request_deserializer))
        if handler.request_streaming and handler.response_streaming:
            return handler._replace(stream_stream=self._streaming(handler.stream_stream, method))
        if handler.response_streaming:
            return handler._replace(unary_stream=self._streaming(handler.unary_stream, method))
        if handler.request_streaming:
            return handler._replace(stream_unary=self._unary(handler.stream_unary, method))
        return handler._replace(unary_unary=self._unary(handler.unary_unary, method))

    def _unary(self, behaviour, method):
        async def observed(request, context):
            call = _Call(self.service, method, context)
            try:
                self.admit(method, context)
                response = await behaviour(_checked(request), context)
            except BaseException as error:
                await call.failed(error)
                raise
            call.finished()
            return response
        return observed

    def _streaming(self, behaviour, method):
        async def observed(request, context):
            call = _Call(self.service, method, context)
            try:
                self.admit(method, context)
                responses = behaviour(_checked(request), context)
                if inspect.isasyncgen(responses):
                    async for response in responses:
                        yield response
                else:   # a handler that streams with context.write (grpc_health's Watch)
                    await responses
            except BaseException as error:
                await call.failed(error)
                raise
            call.finished()
        return observed


class _Malformed:
    """A request whose bytes are not the method's message: its handler answers INVALID_ARGUMENT
    (gRPC itself would answer UNKNOWN, as if the server had failed)."""

    def __init__(self, error: DecodeError):
        self.error = error

    def refused(self) -> InvalidArgument:
        return InvalidArgument("request", f"is not a valid message of this method's type ({self.error})")


def _tolerant(deserialize):
    if deserialize is None:
        return None

    def parse(data: bytes):
        try:
            return deserialize(data)
        except DecodeError as error:
            return _Malformed(error)
    return parse


def _checked(request):
    """The request, or (for a client stream) the requests, refusing a malformed one."""
    if isinstance(request, _Malformed):
        raise request.refused()
    if hasattr(request, "__aiter__"):
        return _checked_stream(request)
    return request


async def _checked_stream(requests):
    async for request in requests:
        if isinstance(request, _Malformed):
            raise request.refused()
        yield request


class _Call:
    """One RPC in flight: sets its context variables, records its outcome once."""

    def __init__(self, service: str, method: str, context: grpc.aio.ServicerContext):
        self.service, self.method, self.context = service, method, context
        self.start = time.perf_counter()
        headers = {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}
        logs.request_id.set(headers.get("x-request-id") or uuid.uuid4().hex)
        remaining = context.time_remaining()
        inbound.set(Inbound(
            deadline=None if remaining is None else time.monotonic() + remaining,
            forward=tuple((k, headers[k]) for k in ("authorization", "x-request-id")
                          if k in headers)))
        telemetry.enter_trace(headers)
        telemetry.REQUESTS.labels(service, method).inc()

    def finished(self) -> None:
        self._record(grpc.StatusCode.OK)

    async def failed(self, error: BaseException) -> None:
        """Record the outcome; turn a kit error or a crash into a status (context.abort raises)."""
        if isinstance(error, Error):
            self._record(error.code, error.message)
            # OpenTelemetry's wrapper of the context sees set_code and abort, not abort_with_status:
            # without this the trace would show every refused call as OK.
            self.context.set_code(error.code)
            self.context.set_details(error.message)
            await self.context.abort_with_status(error.to_status())
        elif isinstance(error, asyncio.CancelledError):
            self._record(grpc.StatusCode.CANCELLED)
        elif isinstance(error, grpc.aio.AbortError):
            self._record(self.context.code() or grpc.StatusCode.UNKNOWN)
        elif database.unreachable(error):
            log.warning("the database is unavailable: %s", error, extra={"fields": {"method": self.method}})
            self._record(grpc.StatusCode.UNAVAILABLE, "database unavailable")
            await self.context.abort(grpc.StatusCode.UNAVAILABLE, "database unavailable; try again")
        elif isinstance(error, Exception):
            log.error("unhandled error in %s", self.method, exc_info=error)
            self._record(grpc.StatusCode.INTERNAL)
            await self.context.abort(grpc.StatusCode.INTERNAL, "internal error")

    def _record(self, code: grpc.StatusCode, message: str = "") -> None:
        elapsed = time.perf_counter() - self.start
        telemetry.HANDLED.labels(self.service, self.method, code.name).inc()
        telemetry.LATENCY.labels(self.service, self.method).observe(elapsed)
        if not self.method.startswith(QUIET_PREFIXES):
            fields = {"method": self.method, "code": code.name,
                      "duration_ms": round(elapsed * 1000, 2)}
            if message:
                fields["detail"] = message
            log.info("rpc", extra={"fields": fields})
