"""Operating under load, timed: how long a failing canary takes to lose its traffic, and what a
model hot-swap costs the callers.

1. Canary rollback. Recommend traffic from a few threads (users with history, so the model
   answers); `aimesh canary recommend --to v2 --steps 10,25,50,100 --interval I`; once v2 holds
   25%, v2 starts failing half its calls (`aimesh fault recommend --version v2 --abort UNAVAILABLE
   --percent 50`). Measured from that moment: the rollback decision (the canary log), and the last
   call the gateway sent to v2 (its cluster's call count stops rising). Target: within one
   interval + 5 s.
2. Hot-swap. The same traffic while `aimesh models swap recommender --from 1 --to 3`, then back:
   calls failed and answers that fell back during each swap (target 0), and how long each took.

Prints figures and asserts none. Its own mesh with demo data in /tmp/aimesh-bench-operate-state
on AIMESH_PORT_OFFSET=2000 (override with those two variables), bench/topology.yaml (limits no
thread reaches); wipes that state dir first, always brings the mesh down.

  bin/aimesh bench operate [--interval 30s]
"""
from __future__ import annotations

import argparse
import calendar
import shutil
import threading
import time

from helpers.common import machine

from aimesh import canary, demo, live
from aimesh.harness import MeshUnderTest, RecommendTraffic
from services.kit.retention import seconds

STATE = "/tmp/aimesh-bench-operate-state"
USER = "bob@demo.aimesh"     # pro (bench/topology.yaml: no limit reached), with a purchase history
THREADS = 4
PACE_S = 0.02


def traffic(mesh: MeshUnderTest) -> RecommendTraffic:
    """Recommend from THREADS threads as USER, every call reaching the model."""
    return RecommendTraffic(mesh, demo.login(mesh.gateway, USER), threads=THREADS, pace_s=PACE_S)


def v2_calls(mesh: MeshUnderTest) -> float:
    stats = live.envoy_stats(mesh.topo, "cluster.recommend-v2.upstream_rq_total")
    return stats.get("cluster.recommend-v2.upstream_rq_total", 0.0)


def rollback(mesh: MeshUnderTest, interval: str) -> None:
    interval_s = seconds(interval)
    with traffic(mesh) as calls:
        rollout = threading.Thread(target=mesh.cli, args=("canary", "recommend", "--to", "v2", "--steps",
                                                          "10,25,50,100", "--interval", interval,
                                                          "--min-calls", "50"),
                                   kwargs={"timeout": interval_s * 20})
        rollout.start()
        while not any(d["decision"] == "promote" and d["step"] == 10
                      for d in canary.last_run(mesh.state, "recommend")):
            time.sleep(0.2)      # polling the canary's own log; bounded by its interval
        time.sleep(interval_s / 4)   # a while into the 25% step
        mesh.run("fault", "recommend", "--version", "v2", "--abort", "UNAVAILABLE", "--percent", "50")
        failing_from = time.time()
        rollout.join()
        last_change, seen = time.time(), v2_calls(mesh)
        settle_until = time.time() + 5
        while time.time() < settle_until:   # v2's count must stay still for 5 s
            if (now := v2_calls(mesh)) != seen:
                last_change, seen = time.time(), now
            time.sleep(0.1)
        outcomes = calls.snapshot()
    decision = canary.last_run(mesh.state, "recommend")[-1]
    decided_at = calendar.timegm(time.strptime(decision["time"], "%Y-%m-%dT%H:%M:%SZ"))
    print(f"\ncanary rollback (interval {interval_s:g} s; v2 fails 50% of its calls once at 25%):")
    print(f"  decision: {decision['decision']} at {decision['step']}% - {decision['reason']}")
    print(f"  fault -> rollback decision: {decided_at - failing_from:5.1f} s (log time, 1 s resolution)")
    print(f"  fault -> v2's last call:    {max(0.0, last_change - failing_from):5.1f} s "
          f"(target <= {interval_s + 5:g} s)")
    print(f"  calls meanwhile: {dict(outcomes)}")
    mesh.run("fault", "clear")
    mesh.run("canary", "abort", "recommend")


def hot_swap(mesh: MeshUnderTest) -> None:
    print("\nmodel hot-swap under load (4 threads, every call reaching the model):")
    with traffic(mesh) as calls:
        time.sleep(3)
        for old, new in (("1", "3"), ("3", "1")):
            before = calls.snapshot()
            started = time.perf_counter()
            mesh.run("models", "swap", "recommender", "--from", old, "--to", new)
            took = time.perf_counter() - started
            during = calls.snapshot() - before
            failed = sum(n for k, n in during.items() if k not in ("model", "fallback"))
            print(f"  {old} -> {new}: {took:4.1f} s; {sum(during.values())} calls during it: "
                  f"{failed} failed, {during['fallback']} fell back, {during['model']} from the model")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--interval", default="30s", help="the canary's step interval")
    args = parser.parse_args()
    print(machine())
    mesh = MeshUnderTest.for_bench(state=STATE)
    shutil.rmtree(mesh.state, ignore_errors=True)
    try:
        mesh.up(demo_data=True)
        rollback(mesh, args.interval)
        hot_swap(mesh)
    finally:
        mesh.down_and_report()


if __name__ == "__main__":
    main()
