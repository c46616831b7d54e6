"""Metrics (Prometheus, per method) and tracing (OpenTelemetry; OTLP export when configured)."""
from __future__ import annotations

import os

import prometheus_client
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import (
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


def setup_tracing(service: str, instance: str, sampling: float = 1.0) -> None:
    """Spans always exist (trace ids in logs); they are exported only when
    OTEL_EXPORTER_OTLP_ENDPOINT names a collector, and then Postgres queries are spans too. A
    call follows the sampling decision of the trace it is part of (the gateway's); a trace this
    service starts is sampled at `sampling`."""
    provider = TracerProvider(resource=Resource.create(
        {"service.name": service, "service.instance.id": instance}),
        sampler=ParentBased(_NoOutboundRoots(TraceIdRatioBased(sampling))))
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        AsyncPGInstrumentor().instrument(tracer_provider=provider)
    trace.set_tracer_provider(provider)
