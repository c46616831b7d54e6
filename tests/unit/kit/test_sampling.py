"""The kit's sampler: traces start where a service is called, never at a call it makes alone."""
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

from services.kit.telemetry import _NoOutboundRoots


def tracer_and_spans(sampling: float = 1.0):
    exported = InMemorySpanExporter()
    provider = TracerProvider(sampler=ParentBased(_NoOutboundRoots(TraceIdRatioBased(sampling))))
    provider.add_span_processor(SimpleSpanProcessor(exported))
    return provider.get_tracer("test"), exported


def test_a_query_or_call_made_outside_any_request_is_not_a_trace():
    tracer, exported = tracer_and_spans()
    with tracer.start_as_current_span("SELECT", kind=trace.SpanKind.CLIENT) as span:
        assert not span.is_recording()
    assert exported.get_finished_spans() == ()


def test_a_query_made_while_serving_a_call_joins_its_trace():
    tracer, exported = tracer_and_spans()
    with tracer.start_as_current_span("/aimesh.search.v1.SearchService/Search", kind=trace.SpanKind.SERVER):
        with tracer.start_as_current_span("SELECT", kind=trace.SpanKind.CLIENT):
            pass
    names = [s.name for s in exported.get_finished_spans()]
    assert names == ["SELECT", "/aimesh.search.v1.SearchService/Search"]


def test_received_calls_are_still_sampled_at_the_share():
    tracer, exported = tracer_and_spans(sampling=0.0)
    with tracer.start_as_current_span("/aimesh.search.v1.SearchService/Search", kind=trace.SpanKind.SERVER):
        pass
    assert exported.get_finished_spans() == ()
