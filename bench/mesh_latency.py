"""What the whole mesh adds to a model call: Recommend and Search through the gateway, beside the
direct Triton call of the model each one runs (recommender version 1, text_embedding), in one run;
and what one gateway hop adds: GetProfile through the edge (JWT, rate limit, route, mTLS) beside
the same call made to user-svc's own port as the gateway would make it.

A mesh call is everything a client pays for: the edge (JWT, rate limit, route), the service,
its Postgres work, the east-west hop to Triton and the model itself; Recommend also reads the
history and titles and publishes its audit event, Search also runs the HNSW query. The direct
row is the same model inputs sent straight to Triton's gRPC port, so mesh/direct is the mesh's
overhead as a ratio. Each Recommend excludes a different unknown item id: a new key for
recommend-svc's answer cache (every call reaches the model) that changes nothing in the ranking.
Each row also prints the CPU time per request of every component (bench/helpers/cpu.py): on
two shared cores, that is what decides throughput.

Prints figures and asserts none. Runs its own mesh with demo data, by default in
/tmp/aimesh-bench-latency-state on AIMESH_PORT_OFFSET=2000 (override with those two variables),
with bench/topology.yaml (pro limits no row reaches); wipes that state dir first, always brings
the mesh down. Run it as bin/aimesh runs the CLI:

  bin/aimesh bench mesh_latency
"""
from __future__ import annotations

import itertools
import os
import shutil
import sys
import time
from collections.abc import Callable

import grpc
import numpy as np
import tritonclient.grpc as grpcclient
from helpers import loadgen
from helpers.common import machine
from helpers.cpu import CpuMeter, grouped

from aimesh import demo
from aimesh.common.v1 import common_pb2
from aimesh.harness import MeshUnderTest
from aimesh.recommend.v1 import recommend_pb2, recommend_pb2_grpc
from aimesh.search.v1 import search_pb2, search_pb2_grpc
from aimesh.user.v1 import user_pb2, user_pb2_grpc
from services.kit.identity import ROLE_HEADER, TIER_HEADER, USER_ID_HEADER

PRO_USER = "bob@demo.aimesh"
HISTORY = [50, 172, 181]            # the Star Wars trilogy, bought by the pro user first
K = 10
CONCURRENCIES = (1, 32, 64)
REQUESTS = 500                      # per row
WARMUP = 50
TIMEOUT_S = 30                      # generous: 64 in flight on two shared cores
QUERIES = ["Star Wars", "animated film for children", "film noir detective story",
           "romantic comedy from 1995", "horror movie with a killer", "war film about soldiers",
           "science fiction space adventure", "western with cowboys"]
FIRST_UNKNOWN_ITEM = 1_000_000      # far above MovieLens ids; see the module docstring

Start = Callable[[int, loadgen.Done], None]


def on_done(future: grpc.Future, done: loadgen.Done) -> None:
    future.add_done_callback(lambda f: done(f.exception()))


def tensor(name: str, values: np.ndarray, triton_type: str) -> grpcclient.InferInput:
    data = grpcclient.InferInput(name, list(values.shape), triton_type)
    data.set_data_from_numpy(values)
    return data


# --- the two calls of each pair -----------------------------------------------------------------

def recommend_via_mesh(stub, metadata, exclusions) -> Start:
    def start(i: int, done: loadgen.Done) -> None:
        request = recommend_pb2.RecommendRequest(limit=K, exclude_item_ids=[next(exclusions)])
        on_done(stub.Recommend.future(request, metadata=metadata, timeout=TIMEOUT_S), done)
    return start


def recommender_direct(client, exclusions) -> Start:
    def start(i: int, done: loadgen.Done) -> None:
        inputs = [tensor("HISTORY", np.array(HISTORY, dtype=np.int64), "INT64"),
                  tensor("K", np.array([K], dtype=np.int32), "INT32"),
                  tensor("EXCLUDE", np.array([next(exclusions)], dtype=np.int64), "INT64")]
        client.async_infer("recommender", inputs, model_version="1", client_timeout=TIMEOUT_S,
                           callback=lambda result, error: done(error))
    return start


def search_via_mesh(stub, metadata) -> Start:
    def start(i: int, done: loadgen.Done) -> None:
        request = search_pb2.SearchRequest(query=QUERIES[i % len(QUERIES)], page_size=K)
        on_done(stub.Search.future(request, metadata=metadata, timeout=TIMEOUT_S), done)
    return start


def embedding_direct(client) -> Start:
    def start(i: int, done: loadgen.Done) -> None:
        text = np.array([[QUERIES[i % len(QUERIES)].encode()]], dtype=np.object_)
        client.async_infer("text_embedding", [tensor("TEXT", text, "BYTES")],
                           client_timeout=TIMEOUT_S, callback=lambda result, error: done(error))
    return start


def profile_via_gateway(stub, metadata) -> Start:
    def start(i: int, done: loadgen.Done) -> None:
        on_done(stub.GetProfile.future(user_pb2.GetProfileRequest(), metadata=metadata,
                                       timeout=TIMEOUT_S), done)
    return start


# --- the pro user's history, so Recommend answers from the model --------------------------------

def give_history(gateway: str, metadata, recommend) -> None:
    """Buy HISTORY, then wait (bounded) until recommend-svc has consumed the purchase events."""
    with grpc.insecure_channel(gateway) as channel:
        users = user_pb2_grpc.UserServiceStub(channel)
        for item_id in HISTORY:
            users.RecordPurchase(user_pb2.RecordPurchaseRequest(item_id=item_id),
                                 metadata=metadata, timeout=5)
    deadline = time.monotonic() + 30
    probe = itertools.count(FIRST_UNKNOWN_ITEM - 1000)    # a new cache key each time
    while True:
        reply = recommend.Recommend(recommend_pb2.RecommendRequest(
            limit=K, exclude_item_ids=[next(probe)]), metadata=metadata, timeout=5)
        if reply.source == common_pb2.SOURCE_MODEL:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"Recommend still answers {reply.fallback_reason!r} after 30 s")
        time.sleep(0.2)


# --- the figures --------------------------------------------------------------------------------

def row(label: str, start: Start, concurrency: int, meter: CpuMeter,
        groups: dict[str, str]) -> dict[str, float]:
    meter.start()
    taken, rate = loadgen.run(REQUESTS, concurrency, start)
    cpu = grouped(meter.per_request_ms(REQUESTS), groups)
    p50, p99 = np.percentile(taken, [50, 99]) * 1000
    mesh_cpu = sum(ms for name, ms in cpu.items() if name != "client")
    spent = "  ".join(f"{name} {ms:.2f}" for name, ms in sorted(cpu.items(), key=lambda kv: -kv[1])
                      if ms >= 0.05)
    print(f"  {label:<38} {concurrency:>4} {p50:>8.2f} {p99:>8.2f} {rate:>8.1f} {mesh_cpu:>8.2f}   {spent}")
    return {"p50": p50, "p99": p99, "rate": rate, "cpu": mesh_cpu}


def measure(pairs: dict[str, tuple[Start, Start]], meter: CpuMeter,
            groups: dict[str, str]) -> dict[tuple[str, str, int], dict[str, float]]:
    print(f"  {REQUESTS} requests per row after {WARMUP} warm-up; load average "
          f"{os.getloadavg()[0]:.2f} (other work on the machine widens p99)")
    print(f"  {'call':<38} {'conc':>4} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>8} {'CPU ms':>8}   "
          f"CPU ms per request by component (the mesh's, then the load generator's)")
    figures = {}
    for name, (mesh_call, direct_call) in pairs.items():
        for path, start in (("mesh", mesh_call), ("direct", direct_call)):
            loadgen.run(WARMUP, 8, start)
            for concurrency in CONCURRENCIES:
                figures[name, path, concurrency] = row(f"{name} {path}", start, concurrency,
                                                       meter, groups)
    return figures


def overhead(figures, names) -> None:
    print(f"\n  mesh overhead (mesh / direct)          {'conc':>4} {'x p50':>9} {'x p99':>9} "
          f"{'+p50 ms':>9} {'x req/s':>9} {'x CPU':>9}")
    for name in names:
        for concurrency in CONCURRENCIES:
            mesh, direct = figures[name, "mesh", concurrency], figures[name, "direct", concurrency]
            print(f"  {name:<38} {concurrency:>4} {mesh['p50'] / direct['p50']:>9.2f} "
                  f"{mesh['p99'] / direct['p99']:>9.2f} {mesh['p50'] - direct['p50']:>9.2f} "
                  f"{mesh['rate'] / direct['rate']:>9.2f} {mesh['cpu'] / direct['cpu']:>9.2f}")


def main() -> int:
    mesh = MeshUnderTest.for_bench(state="/tmp/aimesh-bench-latency-state")
    gateway = f"127.0.0.1:{mesh.topo.gateway.edge_port}"
    print(f"aimesh mesh latency: state {mesh.state}, port offset {mesh.env['AIMESH_PORT_OFFSET']}, "
          f"edge {gateway}\nmachine: {machine()}\n")
    shutil.rmtree(mesh.state, ignore_errors=True)
    try:
        print(f"mesh up with demo data in {mesh.up(demo_data=True):.1f} s")
        metadata = [("authorization", f"Bearer {demo.login(gateway, PRO_USER)}")]
        with grpc.insecure_channel(gateway) as channel, grpcclient.InferenceServerClient(
                f"127.0.0.1:{mesh.topo.infra.triton_grpc_port}") as triton:
            recommend = recommend_pb2_grpc.RecommendServiceStub(channel)
            give_history(gateway, metadata, recommend)
            print(f"{PRO_USER} (pro) bought items {HISTORY}; Recommend pinned to v1\n")
            exclusions = itertools.count(FIRST_UNKNOWN_ITEM)
            pinned = metadata + [("x-model-version", "v1")]
            me = user_pb2_grpc.UserServiceStub(channel).GetProfile(
                user_pb2.GetProfileRequest(), metadata=metadata, timeout=5).profile
            # what Envoy writes for a verified token: user-svc believes it from the gateway only
            as_gateway = [(USER_ID_HEADER, me.user_id), (TIER_HEADER, "pro"), (ROLE_HEADER, "user")]
            with mesh.direct("user", "user") as user_svc:
                pairs = {
                    "Recommend / recommender v1": (recommend_via_mesh(recommend, pinned, exclusions),
                                                   recommender_direct(triton, exclusions)),
                    "Search / text_embedding": (
                        search_via_mesh(search_pb2_grpc.SearchServiceStub(channel), metadata),
                        embedding_direct(triton)),
                    "GetProfile / user-svc (gateway hop)": (
                        profile_via_gateway(user_pb2_grpc.UserServiceStub(channel), metadata),
                        profile_via_gateway(user_pb2_grpc.UserServiceStub(user_svc), as_gateway)),
                }
                groups = {instance.name: service.name for service, instance in mesh.topo.instances()}
                figures = measure(pairs, CpuMeter(mesh), groups)
        overhead(figures, pairs)
    finally:
        clean = mesh.down_and_report()
    return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main())
