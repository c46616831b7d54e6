"""Run last: one search instance dies hard (SIGKILL); Envoy ejects it and retries idempotent
Search calls on the other, so no call fails. The instance is restarted after."""
import time

from aimesh.mesh import Mesh
from aimesh.search.v1 import search_pb2, search_pb2_grpc
from tests.integration.client import bearer
from tests.integration.test_data_plane import envoy_stats

PACE_S = 0.05   # about 20 calls a second: under the pro tier's search limit for the whole test


def test_a_killed_search_instance_is_ejected_and_no_search_fails(mesh, bob):
    runner = Mesh(mesh.topo, mesh.state_dir)
    search = mesh.topo.services["search"]
    victim = search.instances[1]
    stats = f"cluster.{search.name}."
    with mesh.channel() as channel:
        stub = search_pb2_grpc.SearchServiceStub(channel)
        runner.stop(victim.name, kill=True)
        try:
            killed = time.monotonic()
            calls = 0
            while time.monotonic() - killed < 3 * mesh.topo.gateway.resilience.health_interval_s + 2:
                stub.Search(search_pb2.SearchRequest(query="space", page_size=1),
                            metadata=bearer(bob), timeout=10)   # raises on any failure
                calls += 1
                time.sleep(PACE_S)
            counters = envoy_stats(mesh)
            out = counters.get(stats + "outlier_detection.ejections_enforced_total", 0) + \
                counters.get(stats + "health_check.failure", 0)
            assert calls and out > 0, "Envoy neither ejected nor marked the dead instance"
        finally:
            runner.start(victim.name, on_progress=lambda _: None)
