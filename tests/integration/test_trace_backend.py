"""The trace backend as `up --traces` runs it (aimesh/traces: Phoenix in its own virtualenv) on the
session mesh: it takes OTLP over gRPC, and over HTTP as JSON (Triton's exporter), gives a trace back
through its REST API, listens on loopback only, its gRPC receiver included, and caps its storage."""
from __future__ import annotations

import ipaddress
import json
import time
import urllib.error
import urllib.request
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
    assert len(sockets) >= 3             # the UI/HTTP port, the OTLP gRPC receiver, the JSON one
    for socket in sockets:
        ip = ipaddress.ip_address(socket.laddr.ip)
        assert (getattr(ip, "ipv4_mapped", None) or ip).is_loopback, socket.laddr


def post_json(mesh, body: bytes) -> int:
    request = urllib.request.Request(traces.json_endpoint(mesh.topo.infra), data=body,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status
    except urllib.error.HTTPError as refused:
        return refused.code


def test_otlp_as_json_with_hex_ids_as_triton_sends_it_comes_back(mesh, phoenix):
    trace_id, parent, child = uuid.uuid4().hex, uuid.uuid4().hex[:16], uuid.uuid4().hex[:16]
    now = time.time_ns()

    def span(span_id: str, parent_id: str, name: str) -> dict:
        return {"trace_id": trace_id, "span_id": span_id, "parent_span_id": parent_id, "name": name,
                "kind": 2, "start_time_unix_nano": str(now), "end_time_unix_nano": str(now + 1000),
                "attributes": [{"key": "triton.model_name", "value": {"string_value": "recommender"}}]}
    export = {"resource_spans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"string_value": "triton"}}]},
        "scope_spans": [{"scope": {"name": "triton"},
                         "spans": [span(parent, "", "InferRequest"), span(child, parent, "recommender")]}]}]}
    assert post_json(mesh, json.dumps(export).encode()) == 200
    found = wait_for(lambda: traces.spans(mesh.topo.infra, trace_id) if len(
        traces.spans(mesh.topo.infra, trace_id)) == 2 else None, timeout_s=30, what="both spans in Phoenix")
    by_name = {s["name"]: s for s in found}
    assert by_name["recommender"]["parent_id"] == parent
    assert by_name["recommender"]["attributes"]["triton.model_name"] == "recommender"


def test_what_is_not_otlp_json_is_refused_and_the_receiver_goes_on(mesh, phoenix):
    assert post_json(mesh, b"{not json") == 400
    assert post_json(mesh, b'{"resource_spans": [{"scope_spans": [{"spans": [{"trace_id": "zz"}]}]}]}') == 400
    assert post_json(mesh, b'{"resource_spans": []}') == 200


def test_its_storage_is_capped_as_the_topology_says(mesh, phoenix):
    environment = psutil.Process(phoenix).environ()
    capacity_gib = float(environment["PHOENIX_DATABASE_ALLOCATED_STORAGE_CAPACITY_GIBIBYTES"])
    assert capacity_gib * (1 << 30) == mesh.topo.observability.trace_storage_bytes
    assert environment["PHOENIX_DATABASE_USAGE_INSERTION_BLOCKING_THRESHOLD_PERCENTAGE"] == "100"
