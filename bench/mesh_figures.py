"""Figures for the local mesh: `up` time, resident memory, and the latency Envoy adds to a call.

Prints figures and asserts none. Runs its own mesh, by default in /tmp/aimesh-bench-state on
AIMESH_PORT_OFFSET=2000 (override with those two variables), wipes that state dir first, and
always brings the mesh down. Run it as bin/aimesh runs the CLI:

  bin/aimesh bench mesh_figures
"""
from __future__ import annotations

import base64
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable

import grpc
import psutil
from grpc_health.v1 import health_pb2, health_pb2_grpc
from helpers.common import machine

from aimesh import demo
from aimesh.harness import MeshUnderTest
from aimesh.user.v1 import user_pb2, user_pb2_grpc
from services.kit.identity import ROLE_HEADER, TIER_HEADER, USER_ID_HEADER

CALLS = 1000
WARMUP = 50
MIB = 1024 * 1024
ADMIN = "admin@demo.aimesh"


# --- figure 1: up time -----------------------------------------------------------------------

def up_times(mesh: MeshUnderTest) -> dict[str, float]:
    """Cold (empty state dir) and warm (existing state) `up --no-demo` to all-healthy."""
    shutil.rmtree(mesh.state, ignore_errors=True)
    cold = mesh.up()
    mesh.down()
    warm = mesh.up()
    print(f"  cold up (empty state dir)  {cold:6.1f} s")
    print(f"  warm up (existing state)   {warm:6.1f} s")
    return {"cold": cold, "warm": warm}


# --- figure 2: resident memory ---------------------------------------------------------------

def memory(mesh: MeshUnderTest, *, detail: bool = True) -> tuple[float, float]:
    """RSS (and PSS, which does not count shared pages twice) per component and in total, MiB."""
    total_rss = total_pss = 0.0
    if detail:
        print(f"  {'component':<14} {'procs':>5} {'RSS MiB':>9} {'PSS MiB':>9}")
    for name, procs in sorted(mesh.processes().items()):
        rss = pss = 0
        for process in procs:
            try:
                info = process.memory_full_info()
            except psutil.Error:   # exited between listing and reading
                continue
            rss += info.rss
            pss += info.pss
        total_rss += rss / MIB
        total_pss += pss / MIB
        if detail:
            print(f"  {name:<14} {len(procs):>5} {rss / MIB:>9.1f} {pss / MIB:>9.1f}")
    print(f"  {'total':<14} {'':>5} {total_rss:>9.1f} {total_pss:>9.1f}")
    return total_rss, total_pss


# --- figure 3: latency direct vs through Envoy -----------------------------------------------

def sample(call: Callable[[], object], n: int = CALLS, warmup: int = WARMUP) -> list[int]:
    """Latencies in ns of n sequential calls, after warmup calls."""
    for _ in range(warmup):
        call()
    latencies = []
    for _ in range(n):
        started = time.perf_counter_ns()
        call()
        latencies.append(time.perf_counter_ns() - started)
    return sorted(latencies)


def percentile(ordered: list[int], p: float) -> float:
    """Nearest-rank percentile of sorted ns values, in microseconds."""
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)] / 1000


def health_check(channel: grpc.Channel) -> Callable[[], object]:
    stub, request = health_pb2_grpc.HealthStub(channel), health_pb2.HealthCheckRequest()
    return lambda: stub.Check(request, timeout=5)


def get_profile(channel: grpc.Channel, metadata: list[tuple[str, str]]) -> Callable[[], object]:
    stub, request = user_pb2_grpc.UserServiceStub(channel), user_pb2.GetProfileRequest()
    return lambda: stub.GetProfile(request, metadata=metadata, timeout=5)


def claims(token: str) -> dict:
    """The JWT's payload, unverified: what Envoy would write into the identity headers."""
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def latencies(mesh: MeshUnderTest) -> dict[str, dict[str, float]]:
    """p50/p99 of Health/Check and GetProfile, straight to an instance and via Envoy's edge."""
    gateway = f"127.0.0.1:{mesh.topo.gateway.edge_port}"
    token = demo.login(gateway, ADMIN)
    who = claims(token)
    identity = [(USER_ID_HEADER, who["sub"]), (TIER_HEADER, who.get("tier", "free")),
                (ROLE_HEADER, who.get("role", "user"))]
    bearer = [("authorization", f"Bearer {token}")]

    with mesh.direct("user", "user") as user, mesh.direct("catalog", "catalog") as catalog, \
            grpc.insecure_channel(gateway) as edge:
        cases = {
            "Health/Check  user direct": health_check(user),
            "Health/Check  catalog direct": health_check(catalog),
            "Health/Check  via Envoy (->catalog)": health_check(edge),
            "GetProfile    user direct + identity hdrs": get_profile(user, identity),
            "GetProfile    via Envoy + JWT": get_profile(edge, bearer),
        }
        figures = {}
        print(f"  {CALLS} sequential calls each after {WARMUP} warm-up, sync channel; µs "
          f"(load average {os.getloadavg()[0]:.2f}: other work on the machine widens p99)")
        print(f"  {'call':<44} {'p50':>8} {'p99':>8}")
        for label, call in cases.items():
            ordered = sample(call)
            figures[label] = {"p50": percentile(ordered, 50), "p99": percentile(ordered, 99)}
            print(f"  {label:<44} {figures[label]['p50']:>8.0f} {figures[label]['p99']:>8.0f}")

    print(f"\n  {'Envoy overhead (via - direct)':<44} {'+p50':>8} {'+p99':>8} {'x p50':>6} {'x p99':>6}")
    for label, direct, via in [
            ("Health/Check (catalog)", "Health/Check  catalog direct",
             "Health/Check  via Envoy (->catalog)"),
            ("GetProfile (user, JWT check)", "GetProfile    user direct + identity hdrs",
             "GetProfile    via Envoy + JWT")]:
        d, v = figures[direct], figures[via]
        print(f"  {label:<44} {v['p50'] - d['p50']:>8.0f} {v['p99'] - d['p99']:>8.0f}"
              f" {v['p50'] / d['p50']:>6.2f} {v['p99'] / d['p99']:>6.2f}")
    return figures


# --- the report ------------------------------------------------------------------------------

def summary(ups: dict[str, float], demo_up: float, rss: float, pss: float,
            rpc: dict[str, dict[str, float]]) -> None:
    def row(label: str, value: str) -> None:
        print(f"  {label:<40} {value}")

    def pair(direct: str, via: str) -> str:
        d, v = rpc[direct], rpc[via]
        return (f"p50 {d['p50']:.0f} -> {v['p50']:.0f} µs (+{v['p50'] - d['p50']:.0f}, "
                f"x{v['p50'] / d['p50']:.2f}); p99 {d['p99']:.0f} -> {v['p99']:.0f} µs "
                f"(+{v['p99'] - d['p99']:.0f}, x{v['p99'] / d['p99']:.2f})")

    row("cold up --no-demo to all-healthy", f"{ups['cold']:.1f} s")
    row("warm up --no-demo to all-healthy", f"{ups['warm']:.1f} s")
    row("up with demo (incl. catalog seeding)", f"{demo_up:.1f} s")
    row("mesh memory, idle (RSS / PSS)", f"{rss:.0f} / {pss:.0f} MiB")
    row("Health/Check catalog direct -> Envoy",
        pair("Health/Check  catalog direct", "Health/Check  via Envoy (->catalog)"))
    row("GetProfile user direct -> Envoy+JWT",
        pair("GetProfile    user direct + identity hdrs", "GetProfile    via Envoy + JWT"))
    row("machine", machine())


def main() -> int:
    mesh = MeshUnderTest.for_bench()
    print(f"aimesh bench: state {mesh.state}, port offset {mesh.env['AIMESH_PORT_OFFSET']}, "
          f"edge 127.0.0.1:{mesh.topo.gateway.edge_port}")
    print(f"machine: {machine()}\n")
    try:
        print("1. up time")
        ups = up_times(mesh)

        print("\n2. resident memory of the idle mesh (after warm up --no-demo)")
        rss, pss = memory(mesh)
        mesh.down()

        print("\n3. latency, direct vs through Envoy (mesh up with demo data)")
        demo_up = mesh.up(demo_data=True)
        print(f"  (up with demo took {demo_up:.1f} s)")
        rpc = latencies(mesh)
        print("\n  memory after the calls:")
        memory(mesh, detail=False)
    finally:
        clean = mesh.down_and_report()

    print("\n4. summary")
    summary(ups, demo_up, rss, pss, rpc)
    return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main())
