"""Metrics (Prometheus, per method) and tracing (OpenTelemetry; OTLP export when configured)."""
from __future__ import annotations

import os
import random
from collections.abc import Mapping

import grpc
import prometheus_client
from opentelemetry import context, propagate, trace
from opentelemetry.instrumentation.grpc import aio_client_interceptors, aio_server_interceptor, filters
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)

REQUESTS = prometheus_client.Counter(
    "aimesh_grpc_server_started_total", "RPCs started, by method.", ["service", "method"])
HANDLED = prometheus_client.Counter(
    "aimesh_grpc_server_handled_total", "RPCs finished, by method and status code.",
    ["service", "method", "code"])
LATENCY = prometheus_client.Histogram(
    "aimesh_grpc_server_handling_seconds", "Time to finish an RPC, by method.",
    ["service", "method"],
    buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30))

# A service that answers without its model (Recommend's popular items, chat's retrieval-only
# answer) succeeds at the gRPC level: this counts those answers, per cause, so a version's
# fallbacks can be held against it (`aimesh canary`) and shown (`aimesh top`).
FALLBACKS = prometheus_client.Counter(
    "aimesh_fallbacks_total", "Answers given without the model, by route (service.Method) and cause.",
    ["route", "cause"])


def serve_metrics(port: int, host: str = "127.0.0.1") -> None:
    if port:
        prometheus_client.start_http_server(port, addr=host)


class _NoOutboundRoots(Sampler):
    """A trace starts with a call this service receives (or an event it handles), never with
    one it makes on its own: a background loop's query or call (the outbox relay's, the key
    reload's, every second) would each be a trace of one span."""

    def __init__(self, roots: Sampler):
        self.roots = roots

    def should_sample(self, parent_context, trace_id, name, kind=None, attributes=None, links=None,
                      trace_state=None) -> SamplingResult:
        if kind == trace.SpanKind.CLIENT:
            return SamplingResult(Decision.DROP)
        return self.roots.should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)

    def get_description(self) -> str:
        return f"NoOutboundRoots({self.roots.get_description()})"


def exporting() -> bool:
    """Spans go somewhere: OTEL_EXPORTER_OTLP_ENDPOINT names a collector."""
    return bool(os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"))


def setup_tracing(service: str, instance: str, sampling: float = 1.0) -> None:
    """Spans are recorded only when they are exported, and then Postgres queries are spans too.
    A call follows the sampling decision of the trace it is part of (the gateway's); a trace
    this service starts is sampled at `sampling`. Without a collector every span is a
    non-recording one: it still carries its trace's id (logs, events, calls made)."""
    provider = TracerProvider(resource=Resource.create(
        {"service.name": service, "service.instance.id": instance}),
        sampler=ParentBased(_NoOutboundRoots(TraceIdRatioBased(sampling))) if exporting() else ALWAYS_OFF)
    if exporting():
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        AsyncPGInstrumentor().instrument(tracer_provider=provider)
    trace.set_tracer_provider(provider)


# OpenTelemetry's gRPC interceptors cost ~0.4 ms of CPU a Recommend in recommend-svc, a quarter
# of its own, sampled or not (bench/mesh_latency.py, docs/status.md). So they run only where
# spans go somewhere, and there only for the calls of a recorded trace (their filters). The
# other calls still carry their trace's id, which is all that logs, events and the next service
# need of it: the kit's server interceptor enters the caller's trace (`enter_trace`), its client
# interceptor passes it on (`outbound_trace`).

def _caller_recorded(call: grpc.HandlerCallDetails) -> bool:
    """A served call in a recorded trace, or in none yet (this service's sampler decides)."""
    headers = {k: v for k, v in call.invocation_metadata or () if k in ("traceparent", "tracestate")}
    caller = trace.get_current_span(propagate.extract(headers)).get_span_context()
    return not caller.is_valid or caller.trace_flags.sampled


def _in_recorded_trace(call: grpc.aio.ClientCallDetails | None = None) -> bool:
    """A call made while serving a call of a recorded trace (never one made on its own)."""
    return trace.get_current_span().get_span_context().trace_flags.sampled


def server_interceptors() -> list[grpc.aio.ServerInterceptor]:
    if not exporting():
        return []
    # Health checks (every few seconds, from Envoy and the runner) make no traces.
    return [aio_server_interceptor(filter_=filters.all_of(
        filters.negate(filters.health_check()), _caller_recorded))]


def client_interceptors() -> list[grpc.aio.ClientInterceptor]:
    return list(aio_client_interceptors(filter_=_in_recorded_trace)) if exporting() else []


def enter_trace(headers: Mapping[str, str]) -> None:
    """For a served call OpenTelemetry made no span of: the caller's trace (its `traceparent`),
    or a new one, becomes the call's context, so its log lines, the events it publishes and the
    calls it makes carry the trace id."""
    if trace.get_current_span().get_span_context().is_valid:
        return     # OpenTelemetry's interceptor made the call's span
    caller = propagate.extract(headers)
    if not trace.get_current_span(caller).get_span_context().is_valid:
        caller = trace.set_span_in_context(trace.NonRecordingSpan(trace.SpanContext(
            random.getrandbits(128), random.getrandbits(64), is_remote=False)))
    context.attach(caller)     # the call's own task: its context ends with it


def outbound_trace() -> tuple[tuple[str, str], ...]:
    """The current trace's headers for a call made, unless OpenTelemetry's client interceptor
    passes them on itself (a recorded trace, where spans go somewhere)."""
    if exporting() and _in_recorded_trace():
        return ()
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return tuple(carrier.items())
