"""Trace-based tests: every RPC the gateway routes, called through the edge with a trace id of
the test's own, then its span graph read back from the real trace backend (Phoenix, `up
--traces`): Envoy's edge span, under it the service's server span with the status the client got,
and the spans of what the call does downstream — Triton's own among them, which this module turns
on (observability.triton_spans is off by default) — each hanging under the edge's through parents
that all arrived. Adding an RPC adds one row."""
from __future__ import annotations

import json
import random
import urllib.request
import uuid
from dataclasses import dataclass, field

import grpc
import pytest

from aimesh import traces, triton
from aimesh.chat.v1 import chat_pb2
from aimesh.content.v1 import content_pb2
from aimesh.notify.v1 import notify_pb2
from aimesh.ops.v1 import ops_pb2
from aimesh.recommend.v1 import recommend_pb2
from aimesh.search.v1 import search_pb2
from aimesh.user.v1 import user_pb2
from services.user import demo
from tests.integration.client import bearer, wait_for
from tests.integration.content import HARMLESS

INFER = "/inference.GRPCInferenceService/ModelInfer"        # a service's call to Triton
STREAM_INFER = "/inference.GRPCInferenceService/ModelStreamInfer"   # chat_lm's stream
POSTGRES = "postgresql"       # stands for any span of a query (named by its SQL verb)
NOBODYS = str(uuid.uuid4())   # no such content: NOT_FOUND


@dataclass(frozen=True)
class Row:
    path: str                     # /package.Service/Method
    request: object               # the request message (a list of them for a client stream)
    who: str = "bob"              # "bob", "admin", or "" for no token
    below: tuple[str, ...] = ()   # span names the call makes further down
    kind: str = "unary"           # unary, server_stream, bidi
    timeout_s: float = 30
    status_checked: bool = True   # Subscribe is ended by the client's deadline: no status to compare
    attributes: dict = field(default_factory=dict)   # span name -> attributes it must carry


ROWS = [
    Row("/aimesh.user.v1.UserService/Register", user_pb2.RegisterRequest(
        email=f"traced-{uuid.uuid4().hex[:8]}@example.com", password="long enough", display_name="T"), who=""),
    Row("/aimesh.user.v1.UserService/Login", user_pb2.LoginRequest(email="bob@demo.aimesh", password=demo.PASSWORD),
        who=""),
    Row("/aimesh.user.v1.UserService/GetProfile", user_pb2.GetProfileRequest()),
    Row("/aimesh.user.v1.UserService/UpdateProfile", user_pb2.UpdateProfileRequest()),
    Row("/aimesh.user.v1.UserService/RecordPurchase", user_pb2.RecordPurchaseRequest(item_id=172),
        below=(POSTGRES, "process user.purchased")),   # notify's handling joins the purchase's trace
    Row("/aimesh.user.v1.UserService/SetAccess", user_pb2.SetAccessRequest(), who="admin"),
    Row("/aimesh.user.v1.UserService/RotateSigningKey", user_pb2.RotateSigningKeyRequest()),   # not an admin
    Row("/aimesh.search.v1.SearchService/IndexDocuments", search_pb2.IndexDocumentsRequest()),
    Row("/aimesh.search.v1.SearchService/Search", search_pb2.SearchRequest(query="heist", page_size=1),
        below=(INFER, "InferRequest", "text_embedding", "compute", POSTGRES),   # Triton's and the query's
        attributes={"text_embedding": {"triton.model_name": "text_embedding"}}),
    Row("/aimesh.search.v1.SearchService/DeleteDocument", search_pb2.DeleteDocumentRequest()),
    Row("/aimesh.search.v1.SearchService/SubmitIndexJob", search_pb2.SubmitIndexJobRequest()),
    Row("/aimesh.search.v1.SearchService/GetJob", search_pb2.GetJobRequest()),
    Row("/aimesh.recommend.v1.RecommendService/Recommend", recommend_pb2.RecommendRequest(
        limit=3, exclude_item_ids=[random.randint(10**6, 10**9)]), below=(INFER, "recommender"),
        attributes={"recommender": {"triton.model_name": "recommender"}}),
    Row("/aimesh.chat.v1.ChatService/Ask", chat_pb2.AskRequest(message=chat_pb2.UserMessage(
        text="a film about toys", max_tokens=4)), kind="server_stream",
        # Triton's own spans of chat_lm's streamed request are there in most traces, not all (2 of
        # 33 lacked them, a Triton matter: the call reached it and was answered), so not asserted
        below=("retrieve", "/aimesh.search.v1.SearchService/Search", "text_embedding", POSTGRES, "build prompt",
               "chat chat_lm", STREAM_INFER),
        attributes={"chat chat_lm": {"gen_ai.operation.name": "chat", "gen_ai.request.model": "chat_lm",
                                     "gen_ai.usage.output_tokens": 4, "gen_ai.request.max_tokens": 4}}),
    Row("/aimesh.chat.v1.ChatService/Chat", [chat_pb2.ChatRequest(message=chat_pb2.UserMessage(
        text="a film about space", max_tokens=4))], kind="bidi",
        below=("retrieve", "/aimesh.search.v1.SearchService/Search", "chat chat_lm", STREAM_INFER)),
    Row("/aimesh.notify.v1.NotificationService/ListNotifications", notify_pb2.ListNotificationsRequest()),
    Row("/aimesh.notify.v1.NotificationService/MarkRead", notify_pb2.MarkReadRequest()),
    Row("/aimesh.notify.v1.NotificationService/Subscribe", notify_pb2.SubscribeRequest(), kind="server_stream",
        timeout_s=1, status_checked=False),
    Row("/aimesh.ops.v1.OpsService/GetOverview", ops_pb2.GetOverviewRequest(), who="admin"),
    # The saga runs after the call returns, in the call's trace: its steps, their calls to Triton
    # and search-svc (on content-svc's own behalf), and notify's handling of the outcome. A prompt
    # whose greedy blurb is published (tests/integration/content.py), so the saga reaches `index`.
    Row("/aimesh.content.v1.ContentService/CreateContent", content_pb2.CreateContentRequest(
        prompt=HARMLESS, kind=content_pb2.CONTENT_KIND_BLURB),
        below=("saga check_prompt", "saga generate", "saga check_text", "saga index",
               "/aimesh.search.v1.SearchService/IndexDocuments", "process content.published"),
        attributes={"saga index": {"aimesh.saga.attempt": 1}}),
    Row("/aimesh.content.v1.ContentService/GetContent", content_pb2.GetContentRequest(content_id=NOBODYS)),
    Row("/aimesh.content.v1.ContentService/ListContent", content_pb2.ListContentRequest()),
    Row("/aimesh.content.v1.ContentService/WatchContent", content_pb2.WatchContentRequest(content_id=NOBODYS),
        kind="server_stream"),
    Row("/aimesh.content.v1.ContentService/CancelContent", content_pb2.CancelContentRequest(content_id=NOBODYS)),
    Row("/aimesh.content.v1.ContentService/DeleteContent", content_pb2.DeleteContentRequest(content_id=NOBODYS)),
    Row("/aimesh.content.v1.ContentService/ListSagas", content_pb2.ListSagasRequest(page_size=1), who="admin"),
]


def test_every_rpc_the_gateway_routes_has_a_row(mesh):
    routed = {f"/{g}/{m}" for s in mesh.topo.services.values() if s.name != "catalog"
              for g in s.grpc_services for m in _methods(g)}
    assert {row.path for row in ROWS} == routed


def _methods(grpc_service: str) -> list[str]:
    from aimesh import topology
    return list(topology.contract_methods().get(grpc_service, {}))


def call(mesh, row: Row, token: str, trace_id: str, *, recorded: bool = True) -> grpc.StatusCode:
    """The call through the edge as a client makes it; the status it ended with."""
    flags = "01" if recorded else "00"
    metadata = [("traceparent", f"00-{trace_id}-{uuid.uuid4().hex[:16]}-{flags}"), *(bearer(token) if token else [])]
    requests = row.request if isinstance(row.request, list) else [row.request]
    with mesh.channel() as channel:
        serialize, kind = (lambda m: m.SerializeToString()), row.kind
        try:
            if kind == "unary":
                channel.unary_unary(row.path, request_serializer=serialize)(
                    requests[0], metadata=metadata, timeout=row.timeout_s)
            elif kind == "server_stream":
                list(channel.unary_stream(row.path, request_serializer=serialize)(
                    requests[0], metadata=metadata, timeout=row.timeout_s))
            else:
                list(channel.stream_stream(row.path, request_serializer=serialize)(
                    iter(requests), metadata=metadata, timeout=row.timeout_s))
        except grpc.RpcError as ended:
            return ended.code()
    return grpc.StatusCode.OK


@pytest.fixture(scope="module", autouse=True)
def tritons_own_spans(mesh):
    """Triton's own spans, off by default (aimesh.traces.triton_level), on while this module runs."""
    traces.sample(mesh.topo, mesh.state, 1.0, triton_spans=True)
    yield
    traces.sample(mesh.topo, mesh.state, mesh.topo.observability.trace_sampling)


@pytest.fixture(scope="module")
def traced_calls(mesh, bob, admin):
    """Every row called once: path -> (trace id, the client's status)."""
    tokens = {"bob": bob, "admin": admin, "": ""}
    results = {}
    for row in ROWS:
        trace_id = uuid.uuid4().hex
        results[row.path] = (trace_id, call(mesh, row, tokens[row.who], trace_id))
    return results


# Spans Triton exports itself. Triton leaves a few traced requests out: 2-8 of 60 calls to
# text_embedding made back to back, straight to Triton with a sampled traceparent, had none of its
# spans (none of 40 a second apart), and strace showed no export that would have carried them, so
# they are lost inside Triton, not on their way. When only these are missing, the row calls a few
# more times, each with a trace id of its own, and Triton must show them in one of those traces.
TRITON_OWN = {"InferRequest", "compute", *triton.MODELS}
TRITON_RETRIES = 4


class TritonLeftOut(AssertionError):
    """All of a trace arrived but Triton's own spans."""


@pytest.mark.parametrize("row", ROWS, ids=[row.path.rsplit("/", 1)[1] for row in ROWS])
def test_the_span_graph_of_each_rpc(mesh, traced_calls, row, bob, admin):
    trace_id, status = traced_calls[row.path]
    try:
        trace_id, (edge, server, spans) = span_graph(mesh, row, [trace_id])
    except TritonLeftOut:
        token = {"bob": bob, "admin": admin, "": ""}[row.who]
        statuses = {fresh: call(mesh, row, token, fresh) for fresh in
                    (uuid.uuid4().hex for _ in range(TRITON_RETRIES))}
        trace_id, (edge, server, spans) = span_graph(mesh, row, list(statuses))
        status = statuses[trace_id]
    assert edge["attributes"]["upstream_cluster"].startswith(_service(mesh, row))
    assert edge["attributes"]["grpc.path"] == row.path
    if row.status_checked:
        assert server["attributes"]["rpc.grpc.status_code"] == status.value[0], (status, server["attributes"])
    for name, expected in row.attributes.items():
        found = next(s for s in spans if s["name"] == name)["attributes"]
        assert {k: found.get(k) for k in expected} == expected


def _kind(span: dict) -> str:
    return POSTGRES if span["attributes"].get("db.system") == POSTGRES else span["name"]


def reaches(span: dict, root: dict, by_id: dict) -> bool:
    """One trace, end to end: the span hangs, through parents that all arrived, under `root`."""
    seen = 0
    while span is not root and seen < len(by_id):
        span, seen = by_id.get(span["parent_id"]), seen + 1
        if span is None:
            return False
    return span is root


def span_graph(mesh, row: Row, trace_ids: list[str]) -> tuple[str, tuple[dict, dict, list[dict]]]:
    """The first of the traces to arrive whole: its id, and its edge's span, the service's under it,
    and all its spans (each process exports on its own schedule)."""
    wanted = {row.path, *row.below}

    def complete(trace_id: str) -> tuple[dict, dict, list[dict]] | None:
        spans = traces.spans(mesh.topo.infra, trace_id)
        by_id = {s["context"]["span_id"]: s for s in spans}
        # The edge's span is the root here (its parent is the client's, which sends no span); the
        # service's server span hangs under it (a client span of the same name would hang elsewhere).
        for server in (s for s in spans if s["name"] == row.path):
            edge = by_id.get(server["parent_id"])
            if edge and edge["name"] == "ingress" and edge["parent_id"] not in by_id \
                    and wanted <= {_kind(s) for s in spans if reaches(s, edge, by_id)}:
                return edge, server, spans
        return None

    def any_complete() -> tuple[str, tuple[dict, dict, list[dict]]] | None:
        return next(((trace_id, graph) for trace_id in trace_ids if (graph := complete(trace_id))), None)
    try:
        return wait_for(any_complete, timeout_s=45, interval_s=1,
                        what=f"edge span > {row.path}, and {sorted(row.below)} in one of traces {trace_ids}")
    except BaseException:     # say what did arrive, and under what
        missing = set()
        for trace_id in trace_ids:
            arrived = traces.spans(mesh.topo.infra, trace_id)
            names = {s["context"]["span_id"]: s["name"] for s in arrived}
            print(f"trace {trace_id}:")
            print("\n".join(f"  {_kind(s)} (under {names.get(s['parent_id'], s['parent_id'])})" for s in arrived))
            missing |= wanted - {_kind(s) for s in arrived}
        if missing and missing <= TRITON_OWN:
            raise TritonLeftOut(f"Triton's own spans {sorted(missing)} missing from traces {trace_ids}") from None
        raise


def _service(mesh, row: Row) -> str:
    grpc_service = row.path.split("/")[1]
    return next(s.name for s in mesh.topo.services.values() if grpc_service in s.grpc_services)


def test_one_traces_log_lines_come_from_every_component_it_crossed(mesh, traced_calls):
    trace_id, _ = traced_calls["/aimesh.chat.v1.ChatService/Ask"]

    def components() -> set[str]:     # Envoy writes its access log out about every second
        return {line.split()[0] for line in mesh.cli("logs", "--trace", trace_id).stdout.splitlines()}
    wait_for(lambda: {"envoy-access", "chat"} <= components(), timeout_s=15, what="the trace's log lines")
    assert "phoenix" not in components() and components() & {"search-1", "search-2"}


def test_a_call_in_a_trace_not_recorded_makes_no_span_and_still_logs_its_trace_id(mesh, bob):
    """The services leave such calls to the kit's interceptor alone (OpenTelemetry's are filtered
    out for their cost: services/kit/telemetry.py), which carries the trace on to search-svc."""
    row = next(r for r in ROWS if r.path.endswith("/Ask"))
    unrecorded = uuid.uuid4().hex
    try:
        traces.sample(mesh.topo, mesh.state, 0.0)
        assert call(mesh, row, bob, unrecorded, recorded=False) == grpc.StatusCode.OK

        def components() -> set[str]:
            return {line.split()[0] for line in mesh.cli("logs", "--trace", unrecorded).stdout.splitlines()}
        wait_for(lambda: {"chat"} <= components() and components() & {"search-1", "search-2"},
                 timeout_s=15, what="the unrecorded trace's log lines")
    finally:
        traces.sample(mesh.topo, mesh.state, 1.0, triton_spans=True)    # as this module runs
    recorded = uuid.uuid4().hex      # spans go out in order: once this one's are in, so would be those
    assert call(mesh, row, bob, recorded) == grpc.StatusCode.OK
    search = "/aimesh.search.v1.SearchService/Search"
    wait_for(lambda: {row.path, search} <= {s["name"] for s in traces.spans(mesh.topo.infra, recorded)},
             timeout_s=45, interval_s=1, what="the recorded trace's chat and search spans")
    assert traces.spans(mesh.topo.infra, unrecorded) == []


def test_sampling_set_live_sets_tritons_tracing_with_the_edges(mesh):
    """Triton traces every call carrying a context, sampled or not, so it traces only while every
    request is, and then only when its own spans are asked for (aimesh.traces.sample)."""
    def levels() -> tuple[str, list[str]]:
        with urllib.request.urlopen(f"http://127.0.0.1:{mesh.topo.gateway.admin_port}/runtime", timeout=5) as got:
            edge = json.loads(got.read())["entries"]["tracing.random_sampling"]["final_value"]
        request = urllib.request.Request(f"http://127.0.0.1:{mesh.topo.infra.triton_http_port}/v2/trace/setting",
                                         headers=triton.admin_headers(mesh.state))
        with urllib.request.urlopen(request, timeout=5) as got:
            return edge, json.loads(got.read())["trace_level"]
    try:
        traces.sample(mesh.topo, mesh.state, 0.1, triton_spans=True)
        assert levels() == ("10", ["OFF"])
        traces.sample(mesh.topo, mesh.state, 1.0)     # as the topology says: not Triton's own
        assert levels() == ("100", ["OFF"])
    finally:
        traces.sample(mesh.topo, mesh.state, 1.0, triton_spans=True)
    assert levels() == ("100", ["TIMESTAMPS"])
