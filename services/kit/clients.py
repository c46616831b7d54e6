"""Outbound calls: channels with gRPC's own retry policy and a deadline on every call.

A call made while handling a request inherits that request's remaining deadline (never more
than the channel's default) and forwards its authorization and x-request-id, so the east-west
listener can verify the user again and logs join up. Trace context is propagated by OpenTelemetry."""
from __future__ import annotations

import contextvars
import json
import time
from dataclasses import dataclass

import grpc
from opentelemetry.instrumentation.grpc import aio_client_interceptors


@dataclass(frozen=True)
class Inbound:
    deadline: float | None                # time.monotonic() when the inbound call expires
    forward: tuple[tuple[str, str], ...]  # metadata to pass on


inbound: contextvars.ContextVar[Inbound | None] = contextvars.ContextVar("inbound", default=None)

RETRY_ON = ("UNAVAILABLE",)


def service_config(retries: int) -> str:
    """gRPC's retry policy: retry only what never reached a handler (UNAVAILABLE)."""
    method = {"name": [{}]}
    if retries:
        method["retryPolicy"] = {
            "maxAttempts": retries + 1, "initialBackoff": "0.05s", "maxBackoff": "1s",
            "backoffMultiplier": 2, "retryableStatusCodes": list(RETRY_ON)}
    return json.dumps({"methodConfig": [method]})


class Deadlines(grpc.aio.UnaryUnaryClientInterceptor, grpc.aio.UnaryStreamClientInterceptor,
                grpc.aio.StreamUnaryClientInterceptor, grpc.aio.StreamStreamClientInterceptor):
    def __init__(self, default_timeout_s: float):
        self.default_timeout_s = default_timeout_s

    def details(self, call: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        timeout = call.timeout if call.timeout is not None else self.default_timeout_s
        metadata = list(call.metadata or ())
        if parent := inbound.get():
            if parent.deadline is not None:
                timeout = min(timeout, max(parent.deadline - time.monotonic(), 0.001))
            present = {key for key, _ in metadata}
            metadata += [(k, v) for k, v in parent.forward if k not in present]
        return grpc.aio.ClientCallDetails(call.method, timeout, metadata, call.credentials,
                                          call.wait_for_ready)

    async def intercept_unary_unary(self, continuation, call, request):
        return await continuation(self.details(call), request)

    async def intercept_unary_stream(self, continuation, call, request):
        return await continuation(self.details(call), request)

    async def intercept_stream_unary(self, continuation, call, requests):
        return await continuation(self.details(call), requests)

    async def intercept_stream_stream(self, continuation, call, requests):
        return await continuation(self.details(call), requests)


def channel(target: str, *, timeout_s: float = 5.0, retries: int = 2) -> grpc.aio.Channel:
    """A channel whose every call has a deadline (default `timeout_s`) and retries UNAVAILABLE."""
    return grpc.aio.insecure_channel(
        target,
        options=[("grpc.service_config", service_config(retries)), ("grpc.enable_retries", 1)],
        interceptors=[Deadlines(timeout_s), *aio_client_interceptors()])
