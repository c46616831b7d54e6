"""The Envoy config rendered from the topology: golden file, Envoy's own validation, behaviour.

The golden file pins the whole render so any change to it shows up in review. After an
intended change to the topology or the renderer, regenerate it and review the diff:

    AIMESH_UPDATE_GOLDEN=1 python -m pytest tests/contract/test_envoy_render.py
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from aimesh import certs, envoy, overrides, topology, web

GOLDEN = Path(__file__).parent / "golden" / "envoy.yaml"


@pytest.fixture(scope="module")
def topo() -> topology.Topology:
    return topology.load(topology.DEFAULT_FILE, port_offset=0)


@pytest.fixture(scope="module")
def config(topo) -> dict:
    return envoy.render(topo)


def _listener(config: dict, name: str) -> dict:
    for listener in config["static_resources"]["listeners"]:
        if listener["name"] == name:
            return listener["filter_chains"][0]["filters"][0]["typed_config"]
    raise AssertionError(f"no listener {name}")


def _route_for(hcm: dict, path: str, headers: dict[str, str] | None = None) -> dict:
    """The first route Envoy would pick for a gRPC path (prefix/path and exact header matches)."""
    headers = headers or {}
    for route in hcm["route_config"]["virtual_hosts"][0]["routes"]:
        match = route["match"]
        if "path" in match and match["path"] != path:
            continue
        if "prefix" in match and not path.startswith(match["prefix"]):
            continue
        if all(headers.get(h["name"]) == h["string_match"]["exact"] for h in match.get("headers", [])):
            return route
    raise AssertionError(f"no route for {path}")


def _needs_token(hcm: dict, path: str) -> bool:
    """Whether jwt_authn's first matching rule for the path requires a provider."""
    jwt = next(f for f in hcm["http_filters"] if f["name"] == "envoy.filters.http.jwt_authn")
    for rule in jwt["typed_config"]["rules"]:
        match = rule["match"]
        if match.get("path") == path or ("prefix" in match and path.startswith(match["prefix"])):
            return "requires" in rule
    return False


def test_render_matches_golden_file(config):
    rendered = yaml.safe_dump(config, sort_keys=False)
    if os.environ.get("AIMESH_UPDATE_GOLDEN") == "1":
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(rendered)
    assert rendered == GOLDEN.read_text(), "render changed: AIMESH_UPDATE_GOLDEN=1 to accept it"


def test_render_is_deterministic(topo):
    assert envoy.render(topo) == envoy.render(topology.load(topology.DEFAULT_FILE, port_offset=0))


def test_envoy_accepts_the_written_config(topo, tmp_path):
    web.build()                         # the files the edge serves must exist
    certs.Authority(tmp_path).ensure(topo.workloads(), topo.identity.certificate_lifetime_s)
    path = envoy.write(topo, tmp_path)
    assert path == tmp_path / "envoy" / "envoy.yaml"
    envoy.validate(path)


def test_validate_reports_envoys_complaint(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("static_resources: {clusters: [{name: x, type: NOPE}]}\n")
    with pytest.raises(RuntimeError, match="NOPE"):
        envoy.validate(bad)


@pytest.mark.parametrize("listener", ["edge", "mesh"])
def test_every_grpc_service_routes_to_its_service(config, topo, listener):
    hcm = _listener(config, listener)
    for service in topo.services.values():
        for grpc_service in service.grpc_services:
            route = _route_for(hcm, f"/{grpc_service}/AnyMethod")["route"]
            clusters = ([c["name"] for c in route["weighted_clusters"]["clusters"]]
                        if "weighted_clusters" in route else [route["cluster"]])
            assert all(c.startswith(service.name) for c in clusters), (grpc_service, clusters)
            assert route["max_stream_duration"]["max_stream_duration"] == f"{service.timeout_s:g}s"


@pytest.mark.parametrize("listener", ["edge", "mesh"])
def test_public_methods_need_no_token_and_others_do(config, listener):
    hcm = _listener(config, listener)
    assert not _needs_token(hcm, "/aimesh.user.v1.UserService/Login")
    assert not _needs_token(hcm, "/aimesh.user.v1.UserService/Register")
    assert not _needs_token(hcm, "/grpc.health.v1.Health/Check")           # catalog: "*"
    assert not _needs_token(hcm, "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo")
    assert _needs_token(hcm, "/aimesh.user.v1.UserService/GetProfile")
    assert _needs_token(hcm, "/aimesh.recommend.v1.RecommendService/Recommend")
    assert _needs_token(hcm, "/aimesh.chat.v1.ChatService/Chat")


def test_the_edge_serves_the_page_without_a_token_and_only_the_page(config):
    edge, mesh = _listener(config, "edge"), _listener(config, "mesh")
    for path, (file, content_type) in envoy.WEB_FILES.items():
        route = _route_for(edge, path, {":method": "GET"})
        assert route["direct_response"]["body"] == {"filename": f"{envoy.WEB_DIR}/{file}"}
        assert {"key": "content-type", "value": content_type} in [
            h["header"] for h in route["response_headers_to_add"]]
        assert not _needs_token(edge, path)
    assert edge["route_config"]["max_direct_response_body_size_bytes"] >= 1024 * 1024
    assert _needs_token(edge, "/web/other.js")      # only the named files are public
    with pytest.raises(AssertionError, match="no route"):
        _route_for(mesh, "/", {":method": "GET"})


def test_only_the_mesh_reaches_triton_and_without_a_token(config):
    triton = "/inference.GRPCInferenceService/ModelInfer"
    mesh, edge = _listener(config, "mesh"), _listener(config, "edge")
    assert _route_for(mesh, triton)["route"]["cluster"] == "triton"
    assert not _needs_token(mesh, triton)
    assert _needs_token(edge, triton)
    with pytest.raises(AssertionError, match="no route"):
        _route_for(edge, triton)


def test_identity_headers_are_stripped_before_the_token_check(config):
    """...and browser and JSON calls are gRPC calls before that, so the same checks apply."""
    filters = _listener(config, "edge")["http_filters"]
    assert [f["name"] for f in filters] == [
        "envoy.filters.http.cors", "envoy.filters.http.grpc_web",
        "envoy.filters.http.grpc_json_transcoder", "envoy.filters.http.header_mutation",
        "envoy.filters.http.jwt_authn", "envoy.filters.http.local_ratelimit", "envoy.filters.http.buffer",
        "envoy.filters.http.lua",
        "envoy.filters.http.grpc_stats", "envoy.filters.http.fault", "envoy.filters.http.router"]
    removed = filters[3]["typed_config"]["mutations"]
    assert {m["remove"] for m in removed["request_mutations"]} == {
        "x-aimesh-user-id", "x-aimesh-tier", "x-aimesh-role"}


def test_recommend_split_uses_topology_weights_and_header_pins_a_version(config, topo):
    hcm = _listener(config, "edge")
    path = "/aimesh.recommend.v1.RecommendService/Recommend"
    split = _route_for(hcm, path)["route"]["weighted_clusters"]["clusters"]
    want = {f"recommend-{i.version}": i.weight for i in topo.services["recommend"].instances}
    assert {c["name"]: c["weight"] for c in split} == want
    for version in ("v1", "v2"):
        pinned = _route_for(hcm, path, {"x-model-version": version})["route"]
        assert pinned["cluster"] == f"recommend-{version}"


def test_stream_methods_have_no_route_timeout_only_an_idle_one(config, topo):
    hcm = _listener(config, "edge")
    idle = f"{topo.gateway.stream_idle_timeout_s:g}s"
    streams = [(s, m) for s in topo.services.values() for m in s.streams]
    assert streams, "the topology names stream methods"
    for service, method in streams:
        for grpc_service in service.grpc_services:
            route = _route_for(hcm, f"/{grpc_service}/{method}")["route"]
            assert (route["timeout"], route["idle_timeout"]) == ("0s", idle)
    unary = _route_for(hcm, "/aimesh.chat.v1.ChatService/ListConversations")["route"]
    assert unary["max_stream_duration"]["max_stream_duration"] == f"{topo.services['chat'].timeout_s:g}s"


def test_every_grpc_cluster_speaks_http2(config):
    for cluster in config["static_resources"]["clusters"]:
        options = cluster.get("typed_extension_protocol_options", {})
        if cluster["name"] == "jwks":
            assert not options                  # user-svc serves its JWKS over HTTP/1.1
        else:
            http = options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
            assert "http2_protocol_options" in http["explicit_http_config"]


def test_limits_are_per_user_and_tier_on_the_edge_and_per_address_for_public_methods(config, topo):
    edge, mesh = _listener(config, "edge"), _listener(config, "mesh")
    search = _route_for(edge, "/aimesh.search.v1.SearchService/Search")
    limit = search["typed_per_filter_config"]["envoy.filters.http.local_ratelimit"]
    assert limit["rate_limited_as_resource_exhausted"]
    buckets = {d["entries"][0]["value"]: d["token_bucket"]["max_tokens"] for d in limit["descriptors"]}
    assert buckets == {"free": topo.services["search"].rate_limit.free,
                       "pro": topo.services["search"].rate_limit.pro}
    keys = [a["request_headers"]["header_name"] for a in limit["rate_limits"][0]["actions"]]
    assert keys == ["x-aimesh-tier", "x-aimesh-user-id"]
    login = _route_for(edge, "/aimesh.user.v1.UserService/Login")
    limit = login["typed_per_filter_config"]["envoy.filters.http.local_ratelimit"]
    assert limit["rate_limits"] == [{"actions": [{"remote_address": {}}]}]
    assert "rate_limits" not in search["route"] and "rate_limits" not in login["route"]   # Envoy's old place
    assert "typed_per_filter_config" not in _route_for(mesh, "/aimesh.search.v1.SearchService/Search")


def test_envoy_refuses_connections_past_the_topologys_limit(config, topo):
    monitors = config["overload_manager"]["resource_monitors"]
    assert [(m["name"], m["typed_config"]["max_active_downstream_connections"]) for m in monitors] == [
        ("envoy.resource_monitors.global_downstream_max_connections", topo.gateway.max_client_connections)]


def test_only_idempotent_unary_calls_are_retried_and_never_on_rate_limits(config):
    edge = _listener(config, "edge")
    retry = _route_for(edge, "/aimesh.search.v1.SearchService/Search")["route"]["retry_policy"]
    assert set(retry["retry_on"].split(",")) == {"unavailable", "reset", "connect-failure"}
    assert retry["retry_host_predicate"][0]["name"] == "envoy.retry_host_predicates.previous_hosts"
    assert "retry_policy" not in _route_for(edge, "/aimesh.search.v1.SearchService/IndexDocuments")["route"]
    assert "retry_policy" not in _route_for(edge, "/aimesh.chat.v1.ChatService/Chat")["route"]


def test_service_clusters_break_circuits_check_health_and_eject_outliers(config):
    clusters = {c["name"]: c for c in config["static_resources"]["clusters"]}
    search = clusters["search"]
    assert search["common_lb_config"]["healthy_panic_threshold"] == {"value": 0}
    assert set(search["circuit_breakers"]["thresholds"][0]) >= {
        "max_connections", "max_pending_requests", "max_requests", "retry_budget"}
    assert "grpc_health_check" in search["health_checks"][0]
    assert search["outlier_detection"]["consecutive_gateway_failure"] >= 1
    assert "outlier_detection" not in clusters["user"]      # one host: nowhere else to send


def test_written_routes_are_watched_files_that_apply_replaces(topo, tmp_path):
    bootstrap = yaml.safe_load(envoy.write(topo, tmp_path).read_text())
    for listener in bootstrap["static_resources"]["listeners"]:
        rds = listener["filter_chains"][0]["filters"][0]["typed_config"]["rds"]
        routes = Path(rds["config_source"]["path_config_source"]["path"])
        assert yaml.safe_load(routes.read_text())["resources"][0]["name"] == listener["name"]
    assert envoy.apply_routes(topo, tmp_path)
    moved = topology.load(topology.DEFAULT_FILE, port_offset=1)
    assert not envoy.apply_routes(moved, tmp_path)          # ports moved: needs a restart


# --- run-time faults (aimesh fault): on the target's routes only ------------------------------

FAULT = "envoy.filters.http.fault"


def _faults_on(config: dict, listener: str) -> dict[str, dict]:
    routes = _listener(config, listener)["route_config"]["virtual_hosts"][0]["routes"]
    return {r["name"]: r["typed_per_filter_config"][FAULT] for r in routes
            if FAULT in r.get("typed_per_filter_config", {})}


def test_no_fault_is_rendered_unless_one_is_set(config):
    assert _faults_on(config, "edge") == _faults_on(config, "mesh") == {}
    listener_level = next(f for f in _listener(config, "edge")["http_filters"] if f["name"] == FAULT)
    assert set(listener_level["typed_config"]) == {"@type"}     # inert: injects nothing itself


def test_a_version_fault_aborts_calls_bound_for_that_version_on_both_listeners(topo):
    fault = overrides.fault(topo, "recommend", abort="UNAVAILABLE", percent=50, version="v2")
    config = envoy.render(overrides.Overrides().with_fault(fault).on(topo))
    for listener in ("edge", "mesh"):
        faults = _faults_on(config, listener)
        assert faults and all(name.startswith("recommend") for name in faults)
        assert {f["upstream_cluster"] for f in faults.values()} == {"recommend-v2"}
        assert {f["abort"]["grpc_status"] for f in faults.values()} == {14}
        assert {f["abort"]["percentage"]["numerator"] for f in faults.values()} == {500_000}
    split = _route_for(_listener(config, "edge"), "/aimesh.recommend.v1.RecommendService/Recommend")
    assert FAULT in split["typed_per_filter_config"]


def test_a_triton_model_fault_matches_the_model_header_east_west_only(topo):
    fault = overrides.fault(topo, "triton", delay_s=0.2, model="recommender")
    config = envoy.render(overrides.Overrides().with_fault(fault).on(topo))
    assert _faults_on(config, "edge") == {}
    faults = _faults_on(config, "mesh")
    assert faults and all(name.startswith("triton") for name in faults)
    for rendered in faults.values():
        assert rendered["delay"]["fixed_delay"] == "0.2s" and "abort" not in rendered
        assert rendered["headers"] == [{"name": "x-aimesh-model", "string_match": {"exact": "recommender"}}]


def test_a_caller_fault_matches_the_callers_certificate(topo):
    fault = overrides.fault(topo, "search", abort="UNAVAILABLE", caller="chat")
    config = envoy.render(overrides.Overrides().with_fault(fault).on(topo))
    assert _faults_on(config, "edge") == {}
    header = next(iter(_faults_on(config, "mesh").values()))["headers"][0]
    assert header["name"] == "x-forwarded-client-cert"
    assert "spiffe://aimesh\\.local/chat(;" in header["string_match"]["safe_regex"]["regex"]
    mesh = _listener(config, "mesh")
    assert mesh["forward_client_cert_details"] == "SANITIZE_SET"   # a client's own XFCC is dropped


def test_unary_routes_bound_the_whole_call_so_an_injected_delay_times_out(config, topo):
    edge = _listener(config, "edge")
    unary = _route_for(edge, "/aimesh.user.v1.UserService/GetProfile")["route"]
    assert unary["max_stream_duration"]["max_stream_duration"] == f"{topo.services['user'].timeout_s:g}s"
    assert "timeout" not in unary     # the router's own would start only after an injected delay
    stream = _route_for(edge, "/aimesh.chat.v1.ChatService/Chat")["route"]
    assert "max_stream_duration" not in stream
