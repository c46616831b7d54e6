"""The data plane through the real Envoy: rate limits, grpc-web, JSON, canary split and live
reload, streams beyond the unary timeouts, route timeouts, tracing from the edge into a service.
Limits come from tests/topology.yaml (free users get 4 Recommend calls a minute); buckets are per
user, so each test mints its own user."""
from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
import uuid
from concurrent import futures

import grpc
import pytest
from grpc_health.v1 import health, health_pb2_grpc

from aimesh import certs, envoy, topology
from aimesh.mesh import Mesh
from aimesh.notify.v1 import notify_pb2, notify_pb2_grpc
from aimesh.recommend.v1 import recommend_pb2, recommend_pb2_grpc
from aimesh.search.v1 import search_pb2, search_pb2_grpc
from aimesh.user.v1 import user_pb2, user_pb2_grpc
from services.kit.tls import Identity
from tests import ports
from tests.conftest import TOPOLOGY
from tests.integration.client import bearer, code_of, grpc_web, new_user, next_of_kind, wait_for

RECOMMEND = "/aimesh.recommend.v1.RecommendService/Recommend"


def envoy_stats(mesh) -> dict[str, int]:
    return envoy_stats_at(mesh.topo)


def envoy_stats_at(topo) -> dict[str, int]:
    with urllib.request.urlopen(f"http://127.0.0.1:{topo.gateway.admin_port}/stats", timeout=5) as r:
        pairs = (line.split(": ", 1) for line in r.read().decode().splitlines())
        return {k: int(v) for k, v in pairs if v.isdigit()}


def upstream_calls(mesh, cluster: str) -> int:
    return envoy_stats(mesh).get(f"cluster.{cluster}.upstream_rq_total", 0)


def fresh_token(mesh, tier: str) -> str:
    return mesh.token(sub=str(uuid.uuid4()), tier=tier)


@pytest.fixture(scope="module")
def recommend(mesh):
    with mesh.channel() as channel:
        yield recommend_pb2_grpc.RecommendServiceStub(channel)


def recommend_code(recommend, metadata) -> grpc.StatusCode:
    return code_of(recommend.Recommend, recommend_pb2.RecommendRequest(limit=3), metadata=metadata,
                   timeout=10)


def test_a_user_over_the_limit_is_resource_exhausted_and_reaches_no_upstream(mesh, recommend):
    limit = mesh.topo.services["recommend"].rate_limit
    user = bearer(fresh_token(mesh, "free"))
    assert [recommend_code(recommend, user) for _ in range(limit.free)] == [grpc.StatusCode.OK] * limit.free
    before = sum(upstream_calls(mesh, f"recommend-{v}") for v in ("v1", "v2"))
    assert recommend_code(recommend, user) == grpc.StatusCode.RESOURCE_EXHAUSTED
    # A browser reads the same status (and may read it: CORS headers are on the reply).
    origin = mesh.topo.gateway.web_origin
    web = grpc_web(mesh.gateway, RECOMMEND, recommend_pb2.RecommendRequest(limit=3),
                   recommend_pb2.RecommendResponse, metadata=user, origin=origin)
    assert web.status == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert web.headers["access-control-allow-origin"] == origin
    assert sum(upstream_calls(mesh, f"recommend-{v}") for v in ("v1", "v2")) == before
    # Buckets are per user and sized by tier: others are not limited by this one.
    assert recommend_code(recommend, bearer(fresh_token(mesh, "free"))) == grpc.StatusCode.OK
    pro = bearer(fresh_token(mesh, "pro"))
    assert {recommend_code(recommend, pro) for _ in range(limit.free + 2)} == {grpc.StatusCode.OK}


def test_public_methods_are_limited_per_client_address(mesh):
    """Login needs no token, so its bucket is the client's address: 127.0.0.2 runs out, while
    127.0.0.3 still reaches user-svc (an empty Login is INVALID_ARGUMENT from the service)."""
    login = ("/aimesh.user.v1.UserService/Login", user_pb2.LoginRequest(), user_pb2.LoginResponse)
    per_minute = mesh.topo.gateway.public_rate_limit_per_minute
    replies = [grpc_web(mesh.gateway, *login, source="127.0.0.2") for _ in range(per_minute + 5)]
    limited = [r for r in replies if r.headers.get("grpc-message") == "local_rate_limited"]
    assert limited and {r.status for r in limited} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
    assert grpc_web(mesh.gateway, *login, source="127.0.0.3").status == grpc.StatusCode.INVALID_ARGUMENT


def test_grpc_web_answers_like_grpc_with_cors_for_the_page(mesh, users, alice):
    origin = mesh.topo.gateway.web_origin
    web = grpc_web(mesh.gateway, "/aimesh.user.v1.UserService/GetProfile", user_pb2.GetProfileRequest(),
                   user_pb2.GetProfileResponse, metadata=bearer(alice), origin=origin)
    direct = users.GetProfile(user_pb2.GetProfileRequest(), metadata=bearer(alice), timeout=5)
    assert (web.status, web.message) == (grpc.StatusCode.OK, direct)
    assert web.headers["access-control-allow-origin"] == origin
    refused = grpc_web(mesh.gateway, "/aimesh.user.v1.UserService/GetProfile",
                       user_pb2.GetProfileRequest(), user_pb2.GetProfileResponse)
    assert refused.status == grpc.StatusCode.UNAUTHENTICATED


def test_json_search_answers_like_grpc(mesh, alice):
    body = json.dumps({"query": "star wars", "pageSize": 3}).encode()
    request = urllib.request.Request(f"http://{mesh.gateway}/v1/search", data=body, headers={
        "authorization": f"Bearer {alice}", "content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        answer = json.loads(response.read())
    with mesh.channel() as channel:
        direct = search_pb2_grpc.SearchServiceStub(channel).Search(
            search_pb2.SearchRequest(query="star wars", page_size=3), metadata=bearer(alice), timeout=5)
    assert [r["document"]["documentId"] for r in answer["results"]] == \
        [r.document.document_id for r in direct.results]
    assert answer["nextPageToken"] == direct.next_page_token


def test_a_json_refusal_carries_its_status_and_the_field_in_its_body(mesh, alice):
    """As gRPC clients get it: HTTP 400 and google.rpc.Status as JSON with its BadRequest detail."""
    request = urllib.request.Request(f"http://{mesh.gateway}/v1/recommendations",
                                     data=json.dumps({"limit": 500}).encode(), headers={
                                         "authorization": f"Bearer {alice}", "content-type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 400
    assert refused.value.headers["content-type"] == "application/json"
    status = json.loads(refused.value.read())
    assert status["code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert status["message"].startswith("limit: ")
    [detail] = status["details"]
    assert detail["@type"] == "type.googleapis.com/google.rpc.BadRequest"
    assert [v["field"] for v in detail["fieldViolations"]] == ["limit"]


def split_counts(mesh, recommend, calls: int, metadata) -> dict[str, int]:
    """How many of `calls` Recommend calls each version answered (Envoy's upstream counters)."""
    before = {v: upstream_calls(mesh, f"recommend-{v}") for v in ("v1", "v2")}
    for _ in range(calls):
        recommend.Recommend(recommend_pb2.RecommendRequest(limit=1), metadata=metadata, timeout=10)
    return {v: upstream_calls(mesh, f"recommend-{v}") - before[v] for v in ("v1", "v2")}


def test_canary_splits_by_topology_weight_and_the_header_pins_exactly(mesh, recommend):
    pro = bearer(fresh_token(mesh, "pro"))
    counts = split_counts(mesh, recommend, 300, pro)
    # 90/10 over 300 calls: v2 expects 30, standard deviation about 5.2; +-20 is about 4 sigma.
    assert sum(counts.values()) == 300
    assert 10 <= counts["v2"] <= 50, counts
    for version in ("v1", "v2"):
        pinned = split_counts(mesh, recommend, 20, pro + [("x-model-version", version)])
        assert pinned[version] == 20, pinned


def test_a_weight_change_applied_under_load_loses_no_call(mesh, recommend, tmp_path):
    """Routes come from files Envoy watches; apply_routes replaces them while calls flow."""
    pro = bearer(fresh_token(mesh, "pro"))
    failures, done, stop = [], [0], threading.Event()

    def load():
        while not stop.is_set():
            try:
                recommend.Recommend(recommend_pb2.RecommendRequest(limit=1), metadata=pro, timeout=10)
                done[0] += 1
            except grpc.RpcError as error:
                failures.append(error.code())

    all_to_v2 = tmp_path / "topology.yaml"
    all_to_v2.write_text(f"extends: {TOPOLOGY}\nservices:\n  recommend:\n    instances:\n"
                         "      - {name: recommend-v1, port: 7053, version: v1, weight: 0}\n"
                         "      - {name: recommend-v2, port: 7063, version: v2, weight: 100}\n")
    workers = [threading.Thread(target=load) for _ in range(4)]
    for worker in workers:
        worker.start()
    try:
        wait_for(lambda: done[0] >= 20, timeout_s=30, what="calls before the change")
        assert envoy.apply_routes(topology.load(all_to_v2, port_offset=ports.SESSION_MESH), mesh.state_dir)
        v1 = upstream_calls(mesh, "recommend-v1")
        wait_for(lambda: split_counts(mesh, recommend, 20, pro)["v1"] == 0, timeout_s=30,
                 what="every call on v2")
        assert upstream_calls(mesh, "recommend-v1") - v1 < 40
        assert envoy.apply_routes(mesh.topo, mesh.state_dir)   # and back
        wait_for(lambda: split_counts(mesh, recommend, 30, pro)["v1"] > 0, timeout_s=30,
                 what="v1 answering again")
    finally:
        stop.set()
        for worker in workers:
            worker.join(timeout=30)
    assert not failures and done[0] > 20


def test_a_stream_outlives_the_unary_timeouts(mesh, users):
    _, user_token = new_user(users, "stream")
    longest_unary = max(s.timeout_s for s in mesh.topo.services.values())
    with mesh.channel() as channel:
        inbox = notify_pb2_grpc.NotificationServiceStub(channel)
        live = inbox.Subscribe(notify_pb2.SubscribeRequest(), metadata=bearer(user_token),
                               timeout=longest_unary * 4)
        live.initial_metadata()
        opened = time.monotonic()
        wait_for(lambda: time.monotonic() - opened > longest_unary + 1, timeout_s=longest_unary * 2,
                 what="the unary timeout to pass")
        users.RecordPurchase(user_pb2.RecordPurchaseRequest(item_id=50), metadata=bearer(user_token),
                             timeout=5)
        arrived = next_of_kind(live, "user.purchased")   # after the unary timeouts passed
        live.cancel()
    assert "50" in arrived.body


class SlowLogin(user_pb2_grpc.UserServiceServicer):
    """UserService whose Login never answers by itself: it holds the call until the caller
    goes away, and notes both moments."""

    def __init__(self):
        self.busy = threading.Event()        # a Login is being served
        self.abandoned = threading.Event()   # ... and its caller (Envoy) gave up on it

    def Login(self, request, context):
        self.busy.set()
        gone = threading.Event()
        context.add_callback(gone.set)       # runs when the call ends: here, a reset from Envoy
        if gone.wait(timeout=120):
            self.abandoned.set()
        return user_pb2.LoginResponse()


@pytest.fixture
def slow_gateway(tmp_path):
    """A lone Envoy rendered from the tests' topology on ports of its own, whose only live
    upstream is a SlowLogin in user-svc's place (answering health checks, so it is in rotation)."""
    topo = topology.load(TOPOLOGY, port_offset=ports.SLOW_UPSTREAM)
    slow = SlowLogin()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    user_pb2_grpc.add_UserServiceServicer_to_server(slow, server)
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    authority = certs.Authority(tmp_path)     # Envoy speaks mTLS to user-svc: SlowLogin is it
    authority.ensure(topo.workloads(), topo.identity.certificate_lifetime_s)
    as_user = Identity(authority.bundle("user"), authority.trust_bundle)
    server.add_secure_port(f"127.0.0.1:{topo.services['user'].instances[0].port}",
                           as_user.server_credentials())
    server.start()
    gateway = Mesh(topo, tmp_path)
    try:
        gateway.start("envoy", on_progress=lambda _: None)
        wait_for(lambda: envoy_stats_at(topo).get("cluster.user.membership_healthy") == 1,
                 timeout_s=30, what="the slow user-svc to pass Envoy's health check")
        yield topo, slow
    finally:
        gateway.stop("envoy")
        server.stop(grace=None)


def test_a_slow_upstream_hits_its_route_timeout(slow_gateway):
    """Login (not idempotent, so never retried) outlasts user-svc's route timeout: Envoy answers
    the caller itself and resets the upstream call, which was still being served."""
    topo, slow = slow_gateway
    route_timeout_s = topo.services["user"].timeout_s
    with grpc.insecure_channel(f"127.0.0.1:{topo.gateway.edge_port}") as channel:
        login = user_pb2_grpc.UserServiceStub(channel).Login
        with pytest.raises(grpc.RpcError) as refused:
            # The client would wait far longer: the answer must come from the route's timeout.
            login(user_pb2.LoginRequest(email="slow@example.com", password="x"),
                  timeout=route_timeout_s * 10)
    assert refused.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert refused.value.details() == "downstream duration timeout"
    assert slow.busy.is_set()
    assert envoy_stats_at(topo).get("http.edge.downstream_rq_max_duration_reached") == 1
    wait_for(slow.abandoned.is_set, timeout_s=10, what="Envoy to reset the timed-out upstream call")


def test_admin_serves_prometheus_stats(mesh):
    url = f"http://127.0.0.1:{mesh.topo.gateway.admin_port}/stats/prometheus"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    assert "envoy_cluster_upstream_rq_total" in text and "rate_limit" in text
