"""What tracing costs: Search through the gateway with 0%, 10% and 100% of requests traced, in
one run on one mesh (`up --traces`: spans go to Phoenix). The edge decides which requests are
traced and the services follow its decision, so the share is set live through Envoy's runtime
key tracing.random_sampling (and Triton's tracing with it: on at 100% only), with the trace backend
at the lower CPU priority it runs at (traces.NICENESS) and, in two more rows at 10%, at normal
priority and at SCHED_IDLE (set live on each of its threads; needs root); rows are interleaved
in rounds, so drift on a shared machine falls on every row alike, and each starts once the trace
backend has ingested the spans of the row before. Each row: p50/p99 at concurrency 1 and
requests/s at concurrency 16, and the CPU each row cost per request (from the row's start until the
backend has ingested its spans, less what each process spends idle): the mesh's own (Envoy, services,
Triton, Postgres, ...) apart from the trace backend's, which shares these two cores here but runs
elsewhere in a deployment. Also the trace backend's memory (RSS) and the mesh's start time with it.

Prints figures and asserts none. Its own mesh with demo data in /tmp/aimesh-bench-traces-state on
AIMESH_PORT_OFFSET=2000 (override with those two variables), bench/topology.yaml; wipes that state
dir first, always brings the mesh down.

  bin/aimesh bench tracing_cost
"""
from __future__ import annotations

import os
import shutil
import time

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
# (percent of requests traced, the trace backend's priority: a niceness, or IDLE for Linux's
# SCHED_IDLE, which runs it only on cores nothing else wants): as shipped (traces.NICENESS), and
# 10% with the backend at normal priority, which it had before, and at SCHED_IDLE
IDLE = "idle"
ROWS = ((0, traces.NICENESS), (10, traces.NICENESS), (10, 0), (10, IDLE), (100, traces.NICENESS))
ROUNDS = 4
SEQUENTIAL, CONCURRENT, CONCURRENCY = 100, 300, 16
BACKEND = "phoenix"
IDLE_S = 10
QUERIES = ["Star Wars", "animated film for children", "film noir detective", "romantic comedy",
           "horror movie with a killer", "war film about soldiers", "space adventure", "western"]


def set_sampling(mesh: MeshUnderTest, percent: int) -> None:
    traces.sample(mesh.topo, mesh.state, percent / 100)


def settle(phoenix: psutil.Process, bound_s: float = 60) -> None:
    """Until the trace backend has taken the last row's spans: the services send theirs every
    5 s, then Phoenix's CPU falls under 5% of a core for two half-second windows. Without this the
    next row ran while Phoenix ingested the previous one's spans on the same cores."""
    def cpu() -> float:
        return sum(sum(p.cpu_times()[:2]) for p in (phoenix, *phoenix.children(recursive=True)))
    time.sleep(5.5)
    quiet, deadline = 0, time.monotonic() + bound_s
    while quiet < 2 and time.monotonic() < deadline:
        before = cpu()
        time.sleep(0.5)
        quiet = quiet + 1 if cpu() - before < 0.025 else 0


class RowCpu:
    """CPU ms per request of a row, per component, less each component's idle spending (health
    checks, scrapes, timers) over the row's wall time, which the settle makes long."""

    def __init__(self, mesh: MeshUnderTest):
        self.meter = CpuMeter(mesh)
        self.meter.start()
        self.started = time.monotonic()
        time.sleep(IDLE_S)
        self.idle_ms_per_s = {name: ms / IDLE_S for name, ms in self.meter.per_request_ms(1).items()}

    def start(self) -> None:
        self.meter.start()
        self.started = time.monotonic()

    def per_request_ms(self, requests: int) -> dict[str, float]:
        elapsed = time.monotonic() - self.started
        return {name: ms - self.idle_ms_per_s.get(name, 0.0) * elapsed / requests
                for name, ms in self.meter.per_request_ms(requests).items()}


def prioritise(backend: psutil.Process, priority: int | str) -> None:
    """Every thread of the trace backend at this niceness, or SCHED_IDLE (Linux sets both per
    thread). Raising a priority back needs root (CAP_SYS_NICE)."""
    for process in (backend, *backend.children(recursive=True)):
        for thread in process.threads():
            if priority == IDLE:
                os.sched_setscheduler(thread.id, os.SCHED_IDLE, os.sched_param(0))
            else:
                os.sched_setscheduler(thread.id, os.SCHED_OTHER, os.sched_param(0))
                os.setpriority(os.PRIO_PROCESS, thread.id, int(priority))


def label(share: int, priority: int | str) -> str:
    return f"traced {share:>3}%" + ("" if priority == traces.NICENESS else
                                    ", backend at SCHED_IDLE" if priority == IDLE else f", backend at nice {priority}")


def split(cpu: dict[str, float]) -> tuple[float, float]:
    """(the mesh's CPU, the trace backend's) from a row's per-component figures."""
    mesh = sum(ms for name, ms in cpu.items() if name not in (BACKEND, CLIENT))
    return mesh, cpu.get(BACKEND, 0.0)


def row(stub, metadata) -> tuple[np.ndarray, float]:
    def start(i: int, done: loadgen.Done) -> None:
        future = stub.Search.future(search_pb2.SearchRequest(query=QUERIES[i % len(QUERIES)], page_size=5),
                                    metadata=metadata, timeout=30)
        future.add_done_callback(lambda f: done(f.exception()))
    sequential, _ = loadgen.run(SEQUENTIAL, 1, start)
    _, throughput = loadgen.run(CONCURRENT, CONCURRENCY, start)
    return sequential, throughput


def main() -> None:
    print(machine())
    mesh = MeshUnderTest.for_bench(state=STATE)
    shutil.rmtree(mesh.state, ignore_errors=True)
    try:
        took = mesh.run("up", "--traces")
        phoenix = psutil.Process(Supervisor(mesh.state).pid("phoenix"))
        print(f"mesh up with the trace backend in {took:.1f} s (the state dir was empty; demo data indexed)")
        metadata = [("authorization", f"Bearer {demo.login(mesh.gateway, 'bob@demo.aimesh')}")]
        rows = [r for r in ROWS if r[1] == traces.NICENESS or os.geteuid() == 0]
        if len(rows) < len(ROWS):
            print("(not root: the backend's priority cannot be set back, so the rows at other priorities are left out)")
        latencies: dict[tuple, list[np.ndarray]] = {r: [] for r in rows}
        rates: dict[tuple, list[float]] = {r: [] for r in rows}
        cpus: dict[tuple, list[tuple[float, float]]] = {r: [] for r in rows}
        with grpc.insecure_channel(mesh.gateway) as channel:
            stub = search_pb2_grpc.SearchServiceStub(channel)
            set_sampling(mesh, 100)
            row(stub, metadata)                 # warm-up
            set_sampling(mesh, 0)
            settle(phoenix)
            cpu = RowCpu(mesh)
            for _ in range(ROUNDS):
                for share, priority in rows:
                    set_sampling(mesh, share)
                    prioritise(phoenix, priority)   # also on threads it started since
                    settle(phoenix)
                    cpu.start()
                    sequential, throughput = row(stub, metadata)
                    settle(phoenix)
                    cpus[share, priority].append(split(cpu.per_request_ms(SEQUENTIAL + CONCURRENT)))
                    latencies[share, priority].append(sequential)
                    rates[share, priority].append(throughput)
            prioritise(phoenix, traces.NICENESS)
        print(f"\nSearch through the gateway, {ROUNDS} rounds interleaved: concurrency 1 ({SEQUENTIAL * ROUNDS} "
              f"calls a row), concurrency {CONCURRENCY} ({CONCURRENT * ROUNDS} calls a row); the trace "
              f"backend at nice {traces.NICENESS} unless said")
        base = None
        for r in rows:
            taken = np.concatenate(latencies[r]) * 1000
            p50, p99, rate = np.percentile(taken, 50), np.percentile(taken, 99), float(np.median(rates[r]))
            base = base or (p50, rate)
            print(f"  {label(*r):<38} p50 {p50:6.2f} ms ({p50 / base[0]:.3f}x), p99 {p99:6.2f} ms, "
                  f"{rate:6.1f} requests/s ({rate / base[1]:.3f}x of untraced)")
        print("\nCPU a request (median of the rounds; from the row's start until the backend took its spans, "
              "idle spending taken off)")
        base_cpu = None
        for r in rows:
            mesh_ms, backend_ms = np.median(np.array(cpus[r]), axis=0)
            base_cpu = base_cpu or mesh_ms
            print(f"  {label(*r):<38} the mesh {mesh_ms:6.2f} ms ({mesh_ms / base_cpu:.3f}x of untraced), "
                  f"the trace backend {backend_ms:5.2f} ms")
        settle(phoenix)
        rss = phoenix.memory_info().rss + sum(c.memory_info().rss for c in phoenix.children(recursive=True))
        print(f"\ntrace backend (Phoenix) RSS after the run: {rss / 2**20:.0f} MiB")
    finally:
        mesh.down_and_report()


if __name__ == "__main__":
    main()
