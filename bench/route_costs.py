"""What one call of each route of the load test's mix costs the mesh: the input of the capacity
model (bench/capacity_model.py).

Each route alone, through the gateway, with the load test's own client (bench/load.py's users: the
same calls, one a second per user) at a modest rate, after a warm-up; meanwhile
- CPU ms per call per component (Envoy, each service, Triton, Postgres with its backends, NATS),
  read from /proc, less what each spent idle over a quiet stretch of the same length measured
  first (health checks, scrapes, pollers), so background work is not charged to the calls;
- Postgres commits and rows written (inserted + updated + deleted) per call;
- bytes on the wire per call at the edge and on the east-west listener (Envoy's counters);
- the call's time at that low load: p50 and p99 (a floor under the model's latencies).
Triton's CPU is split between the models a route calls (chat.Ask: what Search costs Triton goes
to text_embedding, the rest to chat_lm).

Writes bench/results/costs.json (committed: the model reads it; re-run when costs change) and
prints a table. Its own mesh (bench/topology.yaml) in /tmp/aimesh-bench-costs-state on
AIMESH_PORT_OFFSET=2000.

  bin/aimesh bench route_costs [--seconds 20]
"""
# bench/load.py patches the standard library with gevent (locust): before anything else
import load  # noqa: F401  isort: skip

import argparse  # noqa: E402
import asyncio  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import asyncpg  # noqa: E402
import gevent  # noqa: E402
import grpc  # noqa: E402
from helpers.common import fresh_mesh, machine  # noqa: E402
from helpers.cpu import CLIENT, CpuMeter, grouped  # noqa: E402
from locust.env import Environment  # noqa: E402

from aimesh import live  # noqa: E402
from aimesh.harness import MeshUnderTest  # noqa: E402

OUT = Path(__file__).parent / "results" / "costs.json"
# calls a second while measuring (users at one call a second): enough calls, little queueing
RATE = {"user.Login": 2, "chat.Ask": 1}
DEFAULT_RATE = 8
MODELS = {"search.Search": ["text_embedding"], "recommend.Recommend": ["recommender"],
          "chat.Ask": ["text_embedding", "chat_lm"]}
# What each call crosses while its caller waits, in order, and what it sets off afterwards (events
# relayed and consumed). Other components' CPU over the run is their own variance, not the call's.
PATH = {"user.Login": ["envoy", "user", "user:argon2", "postgres"],
        "user.GetProfile": ["envoy", "user", "postgres"],
        "user.RecordPurchase": ["envoy", "user", "postgres"],
        "search.Search": ["envoy", "search", "triton:text_embedding", "postgres"],
        "recommend.Recommend": ["envoy", "recommend", "triton:recommender", "postgres"],
        "chat.Ask": ["envoy", "chat", "search", "triton:text_embedding", "postgres", "triton:chat_lm"],
        "notify.ListNotifications": ["envoy", "notify", "postgres"]}
BACKGROUND = {"user.RecordPurchase": ["nats", "recommend", "notify"], "recommend.Recommend": ["nats"],
              "chat.Ask": ["nats"]}
# A stream's time is its first message's (the SLO's): chat's first piece, the answer's opening
# line, goes out before the model writes.
FIRST_REPLY_BEFORE = {"chat.Ask": "triton:chat_lm"}
WIRE = {"edge": "http.edge.downstream_cx_", "mesh": "http.mesh.downstream_cx_"}


async def postgres_counts(dsn: str) -> tuple[int, int]:
    connection = await asyncpg.connect(dsn)
    try:
        row = await connection.fetchrow(
            "SELECT sum(xact_commit) AS commits, sum(tup_inserted + tup_updated + tup_deleted) AS rows"
            " FROM pg_stat_database")
        return int(row["commits"]), int(row["rows"])
    finally:
        await connection.close()


def wire_bytes(mesh: MeshUnderTest) -> dict[str, float]:
    stats = live.envoy_stats(mesh.topo, "http.")
    return {listener: stats.get(prefix + "rx_bytes_total", 0) + stats.get(prefix + "tx_bytes_total", 0)
            for listener, prefix in WIRE.items()}


def idle(mesh: MeshUnderTest, seconds: float, groups) -> tuple[dict[str, float], tuple[int, int]]:
    """CPU ms each component spends in `seconds` with no calls, and Postgres's commits and rows
    written meanwhile (pollers, relays, the migrations' bookkeeping)."""
    meter, dsn = CpuMeter(mesh), mesh.postgres_dsn()
    before = asyncio.run(postgres_counts(dsn))
    meter.start()
    gevent.sleep(seconds)
    after = asyncio.run(postgres_counts(dsn))
    return grouped(meter.per_request_ms(1), groups), (after[0] - before[0] - 1, after[1] - before[1])


def measure(env: Environment, mesh: MeshUnderTest, route: str, seconds: float, groups,
            idle_ms: dict[str, float], idle_db: tuple[int, int]) -> dict:
    rate = RATE.get(route, DEFAULT_RATE)
    load.MeshUser.tasks = [load.ROUTES[route]]
    env.runner.start(rate, spawn_rate=rate)
    gevent.sleep(load.RAMP_S)
    env.stats.reset_all()
    meter, dsn = CpuMeter(mesh), mesh.postgres_dsn()
    commits, rows = asyncio.run(postgres_counts(dsn))
    wire = wire_bytes(mesh)
    meter.start()
    gevent.sleep(seconds)
    spent = grouped(meter.per_request_ms(1), groups)
    entry = env.stats.entries[(route, "grpc")]
    calls = entry.num_requests
    commits_after, rows_after = asyncio.run(postgres_counts(dsn))
    wire_after = wire_bytes(mesh)
    env.runner.stop()
    cpu = {name: max(ms - idle_ms.get(name, 0.0), 0.0) / calls for name, ms in spent.items()
           if name != CLIENT}
    return {"calls": calls, "errors": entry.num_failures, "rate": calls / seconds,
            "cpu_ms": {k: round(v, 3) for k, v in sorted(cpu.items()) if v >= 0.005},
            "postgres_commits": round(max(commits_after - commits - 1 - idle_db[0], 0) / calls, 2),
            "postgres_rows_written": round(max(rows_after - rows - idle_db[1], 0) / calls, 2),
            "wire_bytes": {k: round((wire_after[k] - wire[k]) / calls) for k in WIRE},
            "p50_ms": round(entry.get_response_time_percentile(0.5), 1),
            "p99_ms": round(entry.get_response_time_percentile(0.99), 1),
            "client_cpu_ms": round(spent.get(CLIENT, 0.0) / calls, 2)}


def attribute(costs: dict) -> None:
    """Triton's CPU by model (a route calling one model spends it there; chat.Ask's text_embedding
    share is what Search's costs Triton, the rest chat_lm's); Login's password check apart from
    user-svc's event loop (argon2 runs on a thread pool, off the GIL: what Login costs user-svc
    beyond GetProfile); then each route's CPU kept for the components it crosses (PATH) and sets
    off (BACKGROUND)."""
    login, profile = costs["user.Login"]["cpu_ms"], costs["user.GetProfile"]["cpu_ms"]
    login["user:argon2"] = round(max(login.get("user", 0.0) - profile.get("user", 0.0), 0.0), 3)
    login["user"] = profile.get("user", 0.0)
    for route, models in MODELS.items():
        triton = costs[route]["cpu_ms"].pop("triton", 0.0)
        if len(models) == 1:
            costs[route]["cpu_ms"][f"triton:{models[0]}"] = triton
        else:
            embedding = min(costs["search.Search"]["cpu_ms"].get("triton:text_embedding", 0.0), triton)
            costs[route]["cpu_ms"]["triton:text_embedding"] = round(embedding, 3)
            costs[route]["cpu_ms"]["triton:chat_lm"] = round(triton - embedding, 3)
    for route, figures in costs.items():
        crossed = PATH[route] + BACKGROUND.get(route, [])
        figures["other_cpu_ms"] = round(sum(v for k, v in figures["cpu_ms"].items() if k not in crossed), 2)
        figures["cpu_ms"] = {k: figures["cpu_ms"].get(k, 0.0) for k in crossed}
        figures["background"] = BACKGROUND.get(route, [])
        figures["first_reply_before"] = FIRST_REPLY_BEFORE.get(route, "")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20, help="measured per route")
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args()
    with fresh_mesh("route costs", "/tmp/aimesh-bench-costs-state") as mesh:
        load.Mix.channel = grpc.insecure_channel(mesh.gateway)
        load.Mix.accounts = load.register(mesh.gateway, 16)
        groups = {instance.name: service.name for service, instance in mesh.topo.instances()}
        env = Environment(user_classes=[load.MeshUser])
        env.create_local_runner()
        idle_ms, idle_db = idle(mesh, args.seconds, groups)
        print("idle over the same stretch: CPU ms " + ", ".join(f"{k} {v:.0f}" for k, v in sorted(idle_ms.items()))
              + f"; Postgres commits {idle_db[0]}, rows written {idle_db[1]}")
        costs = {}
        for route in load.ROUTES:
            costs[route] = measure(env, mesh, route, args.seconds, groups, idle_ms, idle_db)
        attribute(costs)
        env.runner.quit()
    print(f"\n{'route':<26} {'calls/s':>7} {'p50 ms':>7} {'CPU ms':>7}  by component")
    for route, c in costs.items():
        print(f"{route:<26} {c['rate']:7.1f} {c['p50_ms']:7.1f} {sum(c['cpu_ms'].values()):7.2f}  "
              + ", ".join(f"{k} {v:.2f}" for k, v in sorted(c["cpu_ms"].items(), key=lambda kv: -kv[1]) if v >= 0.05)
              + f" (other {c['other_cpu_ms']:.2f})  | pg commits {c['postgres_commits']}, "
              f"rows {c['postgres_rows_written']}, wire {c['wire_bytes']['edge']} B edge / "
              f"{c['wire_bytes']['mesh']} B east-west")
    Path(args.out).write_text(json.dumps({
        "measured": datetime.date.today().isoformat(), "machine": machine(),
        "command": "bin/aimesh bench route_costs",
        # cores each component keeps busy with no calls (health checks, scrapes, pollers): the
        # model runs it beside the mix
        "idle_cores": {k: round(v / 1000 / args.seconds, 4) for k, v in sorted(idle_ms.items())
                       if k != CLIENT and v > 0},
        "routes": costs}, indent=1) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
