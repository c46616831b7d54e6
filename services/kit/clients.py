"""Outbound calls: channels with gRPC's own retry policy and a deadline on every call.

A call made while handling a request inherits that request's remaining deadline (never more
than the channel's default) and forwards its authorization and x-request-id, so the east-west
listener can verify the user again and logs join up; and the trace context (telemetry)."""
from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass

import grpc

from . import telemetry
from .tls import GATEWAY, Identity, dns_name


@dataclass(frozen=True)
class Inbound:
    deadline: float | None                # time.monotonic() when the inbound call expires
    forward: tuple[tuple[str, str], ...]  # metadata to pass on


inbound: contextvars.ContextVar[Inbound | None] = contextvars.ContextVar("inbound", default=None)

@contextlib.contextmanager
def as_workload() -> Iterator[None]:
    """Calls made in this block go as this workload alone, even while handling a user's request:
    the user's token is not forwarded (a call on a user's behalf, the topology's
    identity.on_behalf); the inbound deadline and request id still are."""
    parent = inbound.get()
    token = inbound.set(None if parent is None else Inbound(
        parent.deadline, tuple((k, v) for k, v in parent.forward if k != "authorization")))
    try:
        yield
    finally:
        inbound.reset(token)


# One retry layer per hop: Envoy retries what failed upstream (idempotent calls, another host).
# A kit channel has no retry policy of its own; gRPC still retries, transparently, a call that
# never left this process (its connection to the local Envoy failed before sending).
SERVICE_CONFIG = json.dumps({"methodConfig": [{"name": [{}]}]})


class Deadlines(grpc.aio.UnaryUnaryClientInterceptor, grpc.aio.UnaryStreamClientInterceptor,
                grpc.aio.StreamUnaryClientInterceptor, grpc.aio.StreamStreamClientInterceptor):
    def __init__(self, default_timeout_s: float):
        self.default_timeout_s = default_timeout_s

    def details(self, call: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        timeout = call.timeout if call.timeout is not None else self.default_timeout_s
        metadata: list[tuple[str, str | bytes]] = list(call.metadata or ())
        present = {key for key, _ in metadata}
        if parent := inbound.get():
            if parent.deadline is not None:
                timeout = min(timeout, max(parent.deadline - time.monotonic(), 0.001))
            metadata += [(k, v) for k, v in parent.forward if k not in present]
        metadata += [(k, v) for k, v in telemetry.outbound_trace() if k not in present]
        return grpc.aio.ClientCallDetails(call.method, timeout, grpc.aio.Metadata(*metadata),
                                          call.credentials, call.wait_for_ready)

    async def intercept_unary_unary(self, continuation, call, request):
        return await continuation(self.details(call), request)

    async def intercept_unary_stream(self, continuation, call, request):
        return await continuation(self.details(call), request)

    async def intercept_stream_unary(self, continuation, call, requests):
        return await continuation(self.details(call), requests)

    async def intercept_stream_stream(self, continuation, call, requests):
        return await continuation(self.details(call), requests)


def channel(target: str, *, timeout_s: float = 5.0,
            identity: Identity | None = None) -> grpc.aio.Channel | Renewing:
    """A channel whose every call has a deadline (default `timeout_s`); with an identity, mTLS to
    the gateway's east-west listener, renewed as the certificate is."""
    options = [("grpc.service_config", SERVICE_CONFIG), ("grpc.enable_retries", 1)]
    interceptors = [Deadlines(timeout_s), *telemetry.client_interceptors()]
    if identity is None:
        return grpc.aio.insecure_channel(target, options=options, interceptors=interceptors)
    options.append(("grpc.ssl_target_name_override", dns_name(GATEWAY)))
    return Renewing(lambda: grpc.aio.secure_channel(
        target, identity.channel_credentials(), options=options, interceptors=interceptors),
        identity)


class Renewing:
    """A channel that, once its workload's certificate file has been renewed, sends new calls
    over a new channel made with the new certificate; calls in flight finish on the old one,
    which closes after OLD_CHANNEL_GRACE_S. Stubs take it like any channel."""

    CHECK_EVERY_S = 5.0
    OLD_CHANNEL_GRACE_S = 600.0

    def __init__(self, make, identity: Identity):
        self._make, self._identity = make, identity
        self._version = identity.version()
        self._current = make()
        self._checked = time.monotonic()
        self._retired: set[asyncio.Task] = set()

    def current(self) -> grpc.aio.Channel:
        now = time.monotonic()
        if now - self._checked >= self.CHECK_EVERY_S:
            self._checked = now
            if self._identity.changed_since(self._version):
                self._version = self._identity.version()
                old, self._current = self._current, self._make()
                retire = asyncio.ensure_future(self._close_later(old))
                self._retired.add(retire)
                retire.add_done_callback(self._retired.discard)
        return self._current

    async def _close_later(self, old: grpc.aio.Channel) -> None:
        await asyncio.sleep(self.OLD_CHANNEL_GRACE_S)
        await old.close()

    def _method(self, kind: str, method: str, *args, **kwargs):
        made: dict[int, object] = {}

        def call(*call_args, **call_kwargs):
            chan = self.current()
            if id(chan) not in made:
                made.clear()
                made[id(chan)] = getattr(chan, kind)(method, *args, **kwargs)
            return made[id(chan)](*call_args, **call_kwargs)
        return call

    def unary_unary(self, method, *args, **kwargs):
        return self._method("unary_unary", method, *args, **kwargs)

    def unary_stream(self, method, *args, **kwargs):
        return self._method("unary_stream", method, *args, **kwargs)

    def stream_unary(self, method, *args, **kwargs):
        return self._method("stream_unary", method, *args, **kwargs)

    def stream_stream(self, method, *args, **kwargs):
        return self._method("stream_stream", method, *args, **kwargs)

    async def channel_ready(self) -> None:
        await self.current().channel_ready()

    async def close(self, grace: float | None = None) -> None:
        for task in list(self._retired):
            task.cancel()
        await self._current.close(grace)
