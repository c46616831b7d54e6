"""Metrics you can look at, on the session mesh: Prometheus (started by `up`) scrapes every
target, an alert rule fires under an injected fault, nothing listens beyond loopback, and
`aimesh status` sums the SLOs up. The tests' topology scrapes and evaluates every second."""
from __future__ import annotations

import ipaddress
import json
import random
import urllib.parse
import urllib.request

import psutil
import pytest

from aimesh.common.v1 import common_pb2
from aimesh.recommend.v1 import recommend_pb2, recommend_pb2_grpc
from tests.integration.client import bearer, recommender_breakers_closed, wait_for


def loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    return (getattr(ip, "ipv4_mapped", None) or ip).is_loopback   # ::ffff:127.0.0.1: a loopback bind


def prometheus_api(mesh, path: str) -> dict:
    url = f"http://127.0.0.1:{mesh.topo.infra.prometheus_port}/api/v1/{path}"
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())["data"]


def test_prometheus_scrapes_every_target(mesh):
    expected = {i.name for _, i in mesh.topo.instances()} | {"envoy", "triton"}

    def healthy() -> set[str]:
        targets = prometheus_api(mesh, "targets")["activeTargets"]
        return {t["labels"].get("instance_name", t["labels"]["job"]) for t in targets if t["health"] == "up"}
    wait_for(lambda: healthy() == expected, timeout_s=30, what=f"every target up: {expected}")


def test_recorded_route_rates_come_from_the_services(mesh, bob):
    """A counter's first scrape has no rate yet: calls go on until the recorded rate shows them."""
    query = urllib.parse.quote('aimesh:route_requests:rate1m{route="recommend.Recommend"}')

    def recorded_after_a_call() -> float:
        with mesh.channel() as channel:
            recommend_pb2_grpc.RecommendServiceStub(channel).Recommend(
                recommend_pb2.RecommendRequest(limit=3), metadata=bearer(bob), timeout=10)
        found = prometheus_api(mesh, f"query?query={query}")["result"]
        return float(found[0]["value"][1]) if found else 0.0
    assert wait_for(recorded_after_a_call, timeout_s=30, interval_s=0.5, what="the recorded Recommend rate") > 0


@pytest.fixture
def triton_fault(mesh, bob):
    """A Triton fault for the test; afterwards every version's breaker is closed again (its
    probe succeeded), so no later test meets a breaker this one opened."""
    assert mesh.cli("fault", "triton", "--model", "recommender", "--abort", "UNAVAILABLE").returncode == 0
    yield
    assert mesh.cli("fault", "clear").returncode == 0
    recommender_breakers_closed(mesh, bob)


def test_an_alert_fires_when_a_breaker_opens_under_an_injected_fault(mesh, bob, triton_fault):
    with mesh.channel() as channel:
        stub = recommend_pb2_grpc.RecommendServiceStub(channel)
        for _ in range(8):    # past the breaker's 5 consecutive failures, on whichever versions
            reply = stub.Recommend(recommend_pb2.RecommendRequest(
                limit=3, exclude_item_ids=[random.randint(10**6, 10**9)]), metadata=bearer(bob), timeout=10)
            assert reply.source == common_pb2.SOURCE_FALLBACK

    def firing() -> list[dict]:
        return [a for a in prometheus_api(mesh, "alerts")["alerts"]
                if a["labels"]["alertname"] == "BreakerOpen" and a["state"] == "firing"]
    alerts = wait_for(firing, timeout_s=30, what="BreakerOpen to fire")
    assert alerts[0]["labels"]["breaker"].startswith("recommender-")


def test_nothing_listens_beyond_loopback(mesh):
    pids = {p.pid for processes in mesh.processes().values() for p in processes}
    listening = [c for c in psutil.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN and c.pid in pids]
    assert len(listening) >= len(mesh.topo.ports()) - 1, "the test sees the mesh's sockets"
    beyond = [(psutil.Process(c.pid).name(), c.laddr) for c in listening if not loopback(c.laddr.ip)]
    assert beyond == []


def test_status_sums_up_the_slos(mesh):
    shown = mesh.cli("status")
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert "prometheus" in shown.stdout and "SLOs (last 2 s" in shown.stdout
    for route in mesh.topo.slos:
        assert any(line.strip().startswith(route) for line in shown.stdout.splitlines()), route
