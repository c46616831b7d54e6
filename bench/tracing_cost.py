"""What tracing costs: Search through the gateway with 0%, 10% and 100% of requests traced, in
one run on one mesh (`up --traces`). The edge decides which requests are traced and the services
follow its decision, so the share is set live through Envoy's runtime key tracing.random_sampling
(and Triton's tracing with it: on at 100% only). Two parts, each with its own untraced baseline and
its rows interleaved in rounds, so drift on a shared machine falls on every row alike:

- the trace backend here: Phoenix on the same two cores, at the lower CPU priority it runs at
  (traces.NICENESS), as a laptop runs it; each row starts once Phoenix has ingested the spans of
  the row before.
- the trace backend elsewhere: Phoenix stopped and a sink that takes every export and keeps
  nothing on its ports (helpers/otlp_sink.py), so what remains is what tracing costs the mesh
  itself: making, batching and sending spans, as in a deployment whose backend has its own
  machine.

Each row: p50/p99 at concurrency 1 and requests/s at concurrency 16, and the CPU each row cost per
request (from the row's start until the backend has taken its spans, less what each process
spends idle): the mesh's own (Envoy, services, Triton, Postgres, ...) apart from the trace
backend's. Also Phoenix's memory (RSS) and the mesh's start time with it.

Prints figures and asserts none. Its own mesh with demo data in /tmp/aimesh-bench-traces-state on
AIMESH_PORT_OFFSET=2000 (override with those two variables), bench/topology.yaml; wipes that state
dir first, always brings the mesh down.

  bin/aimesh bench tracing_cost
"""
from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import psutil
from helpers import loadgen
from helpers.common import machine
from helpers.cpu import CLIENT, CpuMeter

from aimesh import demo, traces
from aimesh.harness import MeshUnderTest
from aimesh.search.v1 import search_pb2, search_pb2_grpc
from aimesh.supervisor import Supervisor

STATE = "/tmp/aimesh-bench-traces-state"
SHARES = (0, 10, 100)       # percent of requests traced
ROUNDS = 4
SEQUENTIAL, CONCURRENT, CONCURRENCY = 200, 1500, 16
BACKEND = "phoenix"
IDLE_S = 10
QUERIES = ["Star Wars", "animated film for children", "film noir detective", "romantic comedy",
           "horror movie with a killer", "war film about soldiers", "space adventure", "western"]


def set_sampling(mesh: MeshUnderTest, percent: int) -> None:
    traces.sample(mesh.topo, mesh.state, percent / 100)


def _cpu_s(process: psutil.Process) -> float:
    try:
        return sum(sum(p.cpu_times()[:2]) for p in (process, *process.children(recursive=True)))
    except psutil.Error:
        return 0.0


def settle(backend: psutil.Process, bound_s: float = 240) -> None:
    """Until the trace backend has taken the last row's spans: the services send theirs every
    5 s, then its CPU falls under 5% of a core for two half-second windows. Without this the
    next row ran while Phoenix ingested the previous one's spans on the same cores (a 100% row
    is 40-60 s of its CPU)."""
    time.sleep(5.5)
    quiet, deadline = 0, time.monotonic() + bound_s
    while quiet < 2:
        if time.monotonic() > deadline:
            print(f"  (the trace backend was still busy {bound_s:.0f} s after a row: the next row shares its cores)")
            return
        before = _cpu_s(backend)
        time.sleep(0.5)
        quiet = quiet + 1 if _cpu_s(backend) - before < 0.025 else 0


class RowCpu:
    """CPU ms per request of a row: the mesh's (every component but the trace backend) and the
    backend's, each less its idle spending (health checks, scrapes, timers) over the row's wall
    time, which the settle makes long."""

    def __init__(self, mesh: MeshUnderTest, backend: psutil.Process):
        self.meter, self.backend = CpuMeter(mesh), backend
        self.start()
        time.sleep(IDLE_S)
        self.idle_ms_per_s = (self._mesh_ms(1) / IDLE_S, self._backend_ms(1) / IDLE_S)

    def start(self) -> None:
        self.meter.start()
        self.backend_s = _cpu_s(self.backend)
        self.started = time.monotonic()

    def _mesh_ms(self, requests: int) -> float:
        return sum(ms for name, ms in self.meter.per_request_ms(requests).items()
                   if name not in (BACKEND, CLIENT))

    def _backend_ms(self, requests: int) -> float:
        return (_cpu_s(self.backend) - self.backend_s) * 1000 / requests

    def per_request_ms(self, requests: int) -> tuple[float, float]:
        idle = (time.monotonic() - self.started) / requests
        return (self._mesh_ms(requests) - self.idle_ms_per_s[0] * idle,
                self._backend_ms(requests) - self.idle_ms_per_s[1] * idle)


@contextlib.contextmanager
def backend_elsewhere(mesh: MeshUnderTest) -> Iterator[psutil.Process]:
    """Phoenix stopped and the sink on its OTLP ports (gRPC, and Triton's OTLP/HTTP)."""
    Supervisor(mesh.state).stop(BACKEND)
    infra = mesh.topo.infra
    sink = subprocess.Popen([sys.executable, "-m", "helpers.otlp_sink", str(infra.phoenix_grpc_port),
                             str(infra.phoenix_json_port)], cwd=Path(__file__).parent,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert sink.stdout is not None and sink.stdout.readline().strip() == "ready", "the sink did not start"
        yield psutil.Process(sink.pid)
    finally:
        sink.terminate()
        print(f"  (the sink {sink.communicate(timeout=10)[0].strip()})")


def row(stub, metadata) -> tuple[np.ndarray, float]:
    def start(i: int, done: loadgen.Done) -> None:
        future = stub.Search.future(search_pb2.SearchRequest(query=QUERIES[i % len(QUERIES)], page_size=5),
                                    metadata=metadata, timeout=30)
        future.add_done_callback(lambda f: done(f.exception()))
    sequential, _ = loadgen.run(SEQUENTIAL, 1, start)
    _, throughput = loadgen.run(CONCURRENT, CONCURRENCY, start)
    return sequential, throughput


def part(title: str, mesh: MeshUnderTest, backend: psutil.Process, stub, metadata) -> None:
    """The rows at every share, interleaved in rounds; prints them against the untraced row."""
    latencies: dict[int, list[np.ndarray]] = {share: [] for share in SHARES}
    rates: dict[int, list[float]] = {share: [] for share in SHARES}
    cpus: dict[int, list[tuple[float, float]]] = {share: [] for share in SHARES}
    set_sampling(mesh, 0)
    settle(backend)
    cpu = RowCpu(mesh, backend)
    for _ in range(ROUNDS):
        for share in SHARES:
            set_sampling(mesh, share)
            settle(backend)
            cpu.start()
            sequential, throughput = row(stub, metadata)
            settle(backend)
            cpus[share].append(cpu.per_request_ms(SEQUENTIAL + CONCURRENT))
            latencies[share].append(sequential)
            rates[share].append(throughput)
    print(f"\n{title}: Search through the gateway, {ROUNDS} rounds interleaved: concurrency 1 "
          f"({SEQUENTIAL * ROUNDS} calls a row), concurrency {CONCURRENCY} ({CONCURRENT * ROUNDS} calls a row); "
          f"CPU a request (median of the rounds; from the row's start until the backend took its spans, "
          f"idle spending taken off)")
    base = None
    for share in SHARES:
        taken = np.concatenate(latencies[share]) * 1000
        p50, p99, rate = np.percentile(taken, 50), np.percentile(taken, 99), float(np.median(rates[share]))
        mesh_ms, backend_ms = np.median(np.array(cpus[share]), axis=0)
        base = base or (p50, rate, mesh_ms)
        print(f"  traced {share:>3}%  p50 {p50:6.2f} ms ({p50 / base[0]:.3f}x), p99 {p99:6.2f} ms, "
              f"{rate:6.1f} requests/s ({rate / base[1]:.3f}x of untraced); CPU the mesh {mesh_ms:5.2f} ms "
              f"({mesh_ms / base[2]:.3f}x), the backend {backend_ms:5.2f} ms")


def main() -> None:
    print(machine())
    mesh = MeshUnderTest.for_bench(state=STATE)
    shutil.rmtree(mesh.state, ignore_errors=True)
    try:
        took = mesh.run("up", "--traces")
        phoenix = psutil.Process(Supervisor(mesh.state).pid(BACKEND))
        print(f"mesh up with the trace backend in {took:.1f} s (the state dir was empty; demo data indexed)")
        metadata = [("authorization", f"Bearer {demo.login(mesh.gateway, 'bob@demo.aimesh')}")]
        with grpc.insecure_channel(mesh.gateway) as channel:
            stub = search_pb2_grpc.SearchServiceStub(channel)
            set_sampling(mesh, 100)
            row(stub, metadata)                 # warm-up
            part(f"the trace backend here (Phoenix at nice {traces.NICENESS}, on the same cores)",
                 mesh, phoenix, stub, metadata)
            settle(phoenix)
            rss = sum(p.memory_info().rss for p in (phoenix, *phoenix.children(recursive=True)))
            print(f"  Phoenix's RSS after its rows: {rss / 2**20:.0f} MiB")
            with backend_elsewhere(mesh) as sink:
                part("the trace backend elsewhere (a sink that keeps nothing on Phoenix's ports)",
                     mesh, sink, stub, metadata)
    finally:
        mesh.down_and_report()


if __name__ == "__main__":
    main()
