"""The trace backend as `up --traces` runs it (aimesh/traces: Phoenix in its own virtualenv) on the
session mesh: it takes OTLP over gRPC, gives a trace back through its REST API, and listens on
loopback only, its gRPC receiver included."""
from __future__ import annotations

import ipaddress
import uuid

import psutil
import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from aimesh import traces
from aimesh.supervisor import Supervisor
from tests.integration.client import wait_for


@pytest.fixture(scope="module")
def phoenix(mesh) -> int:
    """The session mesh's Phoenix (`up --traces`): its pid."""
    pid = Supervisor(mesh.state).pid("phoenix")
    assert pid is not None, "the session mesh runs with --traces"
    return pid


def test_a_span_sent_over_otlp_grpc_comes_back_from_the_rest_api(mesh, phoenix):
    provider = TracerProvider(resource=Resource.create({"service.name": "aimesh-test"}))
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(
        endpoint=traces.otlp_endpoint(mesh.topo.infra), insecure=True)))
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("parent") as parent:
        with tracer.start_as_current_span("chat chat_lm", attributes={"gen_ai.request.model": "chat_lm"}):
            pass
    provider.shutdown()
    trace_id = format(parent.get_span_context().trace_id, "032x")
    found = wait_for(lambda: traces.spans(mesh.topo.infra, trace_id) if len(
        traces.spans(mesh.topo.infra, trace_id)) == 2 else None, timeout_s=30, what="both spans in Phoenix")
    by_name = {s["name"]: s for s in found}
    assert by_name["chat chat_lm"]["parent_id"] == by_name["parent"]["context"]["span_id"]
    assert by_name["chat chat_lm"]["attributes"]["gen_ai.request.model"] == "chat_lm"
    assert uuid.UUID(trace_id)


def test_it_listens_on_loopback_only(phoenix):
    process = psutil.Process(phoenix)
    sockets = [c for p in (process, *process.children(recursive=True))
               for c in p.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
    assert len(sockets) >= 2             # the UI/HTTP port and the OTLP gRPC receiver
    for socket in sockets:
        ip = ipaddress.ip_address(socket.laddr.ip)
        assert (getattr(ip, "ipv4_mapped", None) or ip).is_loopback, socket.laddr
