"""Where a request's CPU goes: Recommend, Search and a chat turn (Ask) through the gateway.

For each, a fixed number of requests at a fixed concurrency, while
- every component's CPU time is read from /proc (bench/helpers/cpu.py): CPU ms per request for
  Envoy, the services, Triton (with its python stubs), Postgres (with its backends), NATS and the
  load generator itself;
- Postgres's transactions are counted (pg_stat_database): round trips that commit, per request;
- py-spy samples the Python process serving the request (where ptrace is allowed) and splits
  its busy samples by what they were in: the gRPC layer, the event loop (which runs gRPC's and
  asyncpg's compiled callbacks), OpenTelemetry, the access log, metrics, asyncpg, NATS, the kit,
  the handler. A share times the process's CPU ms is the part's CPU ms per request.

Prints tables and asserts none. Runs its own mesh with demo data, by default in
/tmp/aimesh-bench-profile-state on AIMESH_PORT_OFFSET=2000, with bench/topology.yaml; wipes that
state dir first, always brings the mesh down.

  bin/aimesh bench request_profile
"""
from __future__ import annotations

import asyncio
import collections
import itertools
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import grpc
from helpers import loadgen
from helpers.common import machine
from helpers.cpu import CLIENT, CpuMeter, grouped

from aimesh import demo
from aimesh.chat.v1 import chat_pb2, chat_pb2_grpc
from aimesh.harness import MeshUnderTest
from aimesh.recommend.v1 import recommend_pb2, recommend_pb2_grpc
from aimesh.search.v1 import search_pb2, search_pb2_grpc
from aimesh.user.v1 import user_pb2, user_pb2_grpc

TIMEOUT_S = 60
QUERIES = ["Star Wars", "animated film for children", "film noir detective story",
           "romantic comedy from 1995", "horror movie with a killer", "war film about soldiers"]
QUESTIONS = ["Suggest a film about space.", "What is a good comedy?", "Any film noir to watch?",
             "A war film, please.", "Something for children?"]
SAMPLE_RATE = 250     # py-spy samples per second

# What a sample was doing: the first of these found in its stack, from the innermost frame out.
OWNERS = [("/opentelemetry/", "OpenTelemetry (spans)"), ("/prometheus_client/", "metrics"),
          ("/logging/", "access log"), ("services/kit/logs.py", "access log"),
          ("/asyncpg/", "Postgres client (asyncpg)"), ("/nats/", "NATS client"),
          ("services/kit/outbox.py", "outbox"), ("services/kit/audit.py", "audit"),
          ("services/kit/inference.py", "Triton client"), ("/tritonclient/", "Triton client"),
          ("/google/protobuf/", "protobuf"), ("services/kit/interceptors.py", "kit interceptor"),
          ("services/kit/", "kit (other)"), ("/services/", "handler"),
          ("/grpc/", "gRPC (Python layer)"), ("/asyncio/", "event loop (compiled callbacks)"),
          ("selectors.py", "event loop (compiled callbacks)"), ("/threading.py", "gRPC core thread")]
IDLE = ("EpollSelector.select", "Condition.wait", "Event.wait", "_wait_for_tstate_lock")

Start = Callable[[int, loadgen.Done], None]


@dataclass
class Workload:
    name: str
    serves: str            # the instance py-spy samples
    requests: int
    concurrency: int
    start: Start


def on_done(future: grpc.Future, done: loadgen.Done) -> None:
    future.add_done_callback(lambda f: done(f.exception()))


def recommend(channel, metadata) -> Start:
    stub = recommend_pb2_grpc.RecommendServiceStub(channel)
    unknown = itertools.count(1_000_000)    # a new answer-cache key each time: every call is work

    def start(i: int, done: loadgen.Done) -> None:
        request = recommend_pb2.RecommendRequest(limit=10, exclude_item_ids=[next(unknown)])
        on_done(stub.Recommend.future(request, metadata=metadata + [("x-model-version", "v1")],
                                      timeout=TIMEOUT_S), done)
    return start


def search(channel, metadata) -> Start:
    stub = search_pb2_grpc.SearchServiceStub(channel)

    def start(i: int, done: loadgen.Done) -> None:
        request = search_pb2.SearchRequest(query=QUERIES[i % len(QUERIES)], page_size=10)
        on_done(stub.Search.future(request, metadata=metadata, timeout=TIMEOUT_S), done)
    return start


def ask(channel, metadata) -> Start:
    """One chat turn of at most 16 tokens, read to its end on a thread of its own."""
    stub = chat_pb2_grpc.ChatServiceStub(channel)

    def start(i: int, done: loadgen.Done) -> None:
        request = chat_pb2.AskRequest(message=chat_pb2.UserMessage(
            text=QUESTIONS[i % len(QUESTIONS)], max_tokens=16))
        stream = stub.Ask(request, metadata=metadata, timeout=TIMEOUT_S)

        def read() -> None:
            try:
                for _ in stream:
                    pass
            except grpc.RpcError as error:
                done(error)
            else:
                done(None)
        threading.Thread(target=read, daemon=True).start()
    return start


# --- py-spy ----------------------------------------------------------------------------------

def sampler(pid: int, output: Path) -> subprocess.Popen | None:
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        return None
    return subprocess.Popen([spy, "record", "--pid", str(pid), "--rate", str(SAMPLE_RATE),
                             "--format", "raw", "--full-filenames", "--nonblocking",
                             "--output", str(output)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def owners(raw: Path) -> tuple[dict[str, float], int]:
    """Owner -> share of busy samples, and the number of busy samples."""
    counts: collections.Counter[str] = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():   # a frame name with a line break in it: not a stack's end
            continue
        frames = stack.split(";")
        if any(idle in frames[-1] for idle in IDLE):
            continue
        owner = next((name for frame in reversed(frames) for key, name in OWNERS if key in frame),
                     "other")
        counts[owner] += int(n)
    busy = sum(counts.values())
    return {k: v / busy for k, v in counts.most_common()} if busy else {}, busy


# --- Postgres ---------------------------------------------------------------------------------

async def transactions(dsn: str) -> int:
    connection = await asyncpg.connect(dsn)
    try:
        return await connection.fetchval(
            "SELECT sum(xact_commit + xact_rollback) FROM pg_stat_database")
    finally:
        await connection.close()


# --- one workload -----------------------------------------------------------------------------

def profile(mesh: MeshUnderTest, workload: Workload, groups: dict[str, str], scratch: Path) -> None:
    loadgen.run(max(workload.concurrency * 2, 10), workload.concurrency, workload.start)  # warm
    pid = mesh.processes()[workload.serves][0].pid
    raw = scratch / f"{workload.serves}.txt"
    spy = sampler(pid, raw)
    meter = CpuMeter(mesh)
    dsn = mesh.postgres_dsn()
    before = asyncio.run(transactions(dsn))
    meter.start()
    taken, rate = loadgen.run(workload.requests, workload.concurrency, workload.start)
    cpu = grouped(meter.per_request_ms(workload.requests), groups)
    commits = (asyncio.run(transactions(dsn)) - before - 1) / workload.requests   # -1: the count's own
    if spy is not None:
        spy.send_signal(2)     # SIGINT: py-spy writes what it sampled and exits
        _, error = spy.communicate(timeout=60)
    service = groups.get(workload.serves, workload.serves)
    total = sum(ms for name, ms in cpu.items() if name != CLIENT)
    print(f"\n{workload.name}: {workload.requests} requests, {workload.concurrency} at once, "
          f"{rate:.1f} req/s; Postgres transactions per request {commits:.2f}")
    print(f"  CPU ms per request: mesh {total:.2f} = " + ", ".join(
        f"{name} {ms:.2f}" for name, ms in sorted(cpu.items(), key=lambda kv: -kv[1])
        if name != CLIENT and ms >= 0.05) + f"; load generator {cpu.get(CLIENT, 0):.2f}")
    if spy is None:
        print("  (py-spy is not installed: no breakdown inside the service)")
        return
    shares, busy = owners(raw) if raw.exists() else ({}, 0)
    if not shares:
        print(f"  (py-spy sampled nothing: {error.strip()[-200:]})")
        return
    per_request = cpu.get(service, 0.0)   # each instance does the same work per request
    print(f"  inside {workload.serves} ({busy} busy samples; shares of its CPU, and CPU ms per "
          f"request of {service}'s {per_request:.2f}):")
    for owner, share in shares.items():
        if share >= 0.01:
            print(f"    {owner:<34} {share * 100:5.1f}%  {share * per_request:6.2f} ms")


def main() -> int:
    mesh = MeshUnderTest.for_bench(state="/tmp/aimesh-bench-profile-state")
    print(f"aimesh request profile: state {mesh.state}, edge {mesh.gateway}\nmachine: {machine()}")
    shutil.rmtree(mesh.state, ignore_errors=True)
    try:
        print(f"mesh up with demo data in {mesh.up(demo_data=True):.1f} s")
        bob = [("authorization", f"Bearer {demo.login(mesh.gateway, 'bob@demo.aimesh')}")]
        alice = [("authorization", f"Bearer {demo.login(mesh.gateway, 'alice@demo.aimesh')}")]
        groups = {instance.name: service.name for service, instance in mesh.topo.instances()}
        with grpc.insecure_channel(mesh.gateway) as channel, tempfile.TemporaryDirectory() as scratch:
            users = user_pb2_grpc.UserServiceStub(channel)
            for item_id in (50, 172, 181):      # so Recommend answers from the model
                users.RecordPurchase(user_pb2.RecordPurchaseRequest(item_id=item_id),
                                     metadata=bob, timeout=5)
            for workload in (
                    Workload("Recommend", "recommend-v1", 2000, 16, recommend(channel, bob)),
                    Workload("Search", "search-1", 800, 16, search(channel, bob)),
                    # two at once: alice's (free tier) generations_per_user
                    Workload("Chat turn (Ask, 16 tokens)", "chat", 30, 2, ask(channel, alice))):
                profile(mesh, workload, groups, Path(scratch))
    finally:
        clean = mesh.down_and_report()
    return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main())
