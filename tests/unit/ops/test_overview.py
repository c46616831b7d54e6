"""The overview's reading of raw numbers (services/ops/overview.py), without a mesh."""
from __future__ import annotations

from services.ops.overview import Route, _describe, _faults, _gateway_calls, _quantile, _weights

SERVICES = {"aimesh.recommend.v1.RecommendService": "recommend"}


def test_gateway_calls_add_up_every_cluster_and_count_only_server_faults():
    stats = {
        "cluster.recommend-v1.grpc.aimesh.recommend.v1.RecommendService.Recommend.total": 90,
        "cluster.recommend-v2.grpc.aimesh.recommend.v1.RecommendService.Recommend.total": 10,
        "cluster.recommend-v2.grpc.aimesh.recommend.v1.RecommendService.Recommend.14": 4,
        "cluster.recommend-v2.grpc.aimesh.recommend.v1.RecommendService.Recommend.3": 2,   # the caller's
        "cluster.recommend-v1.grpc.aimesh.recommend.v1.RecommendService.Recommend.success": 90,
        "cluster.other.grpc.pkg.Other.Method.total": 5,
    }
    assert _gateway_calls(stats, SERVICES) == {"recommend.Recommend": 100}
    assert _gateway_calls(stats, SERVICES, errors_only=True) == {"recommend.Recommend": 4}


def test_quantiles_come_from_the_bucket_that_holds_them():
    buckets = {0.005: 50.0, 0.01: 98.0, 0.05: 100.0, float("inf"): 100.0}
    assert _quantile(buckets, 0.5) == 5.0 and _quantile(buckets, 0.99) == 50.0
    assert _quantile({}, 0.5) is None


def test_a_route_meets_its_slo_only_within_availability_and_p99():
    def route(errors: float, fallbacks: float, p99: float | None, rps: float = 10.0) -> Route:
        return Route("recommend.Recommend", rps, 1.0, p99, errors, fallbacks, 0.99, 250.0)
    assert route(0.0, 0.005, 100).meets_slo is True
    assert route(0.006, 0.006, 100).meets_slo is False       # errors and fallbacks both count
    assert route(0.0, 0.0, 500).meets_slo is False
    assert route(0.0, 0.0, None, rps=0).meets_slo is None      # idle: nothing to judge


ROUTES = {"edge": {"virtual_hosts": [{"routes": [
    {"name": "recommend-v1-Recommend", "route": {"cluster": "recommend-v1"}},
    {"name": "recommend", "route": {"weighted_clusters": {"clusters": [
        {"name": "recommend-v1", "weight": 75}, {"name": "recommend-v2", "weight": 25}]}},
     "typed_per_filter_config": {"envoy.filters.http.fault": {
         "abort": {"grpc_status": 14, "percentage": {"numerator": 500000, "denominator": "MILLION"}},
         "upstream_cluster": "recommend-v2"}}}]}]},
    "mesh": {"virtual_hosts": [{"routes": [
        {"name": "search-Search", "typed_per_filter_config": {"envoy.filters.http.fault": {
            "delay": {"fixed_delay": "0.2s", "percentage": {"numerator": 20, "denominator": "HUNDRED"}},
            "headers": [{"name": "x-forwarded-client-cert", "string_match": {
                "safe_regex": {"regex": ".*URI=spiffe://aimesh\\.local/chat(;.*)?"}}}]}}}]}]}}


def test_weights_and_faults_are_read_from_the_gateways_live_routes():
    assert _weights(ROUTES) == {"recommend": {"recommend-v1": 75, "recommend-v2": 25}}
    assert _faults(ROUTES) == ["recommend (edge): abort grpc-status 14 on 50%, to recommend-v2",
                               "search (mesh): delay 0.2s on 20%, from chat"]
    assert _describe({"delay": {"fixed_delay": "1s", "percentage": {"numerator": 1}},
                      "headers": [{"name": "x-aimesh-model", "string_match": {"exact": "recommender"}}]}) \
        == "delay 1s on 1%, when x-aimesh-model: recommender"
