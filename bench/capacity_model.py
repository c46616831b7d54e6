"""A capacity model of the mesh: a discrete-event simulation (simpy) of the load test's mix on a
given placement, driven by the measured cost of each call (bench/results/costs.json, from
`bin/aimesh bench route_costs`).

Why a simulation and not queueing formulas: on one machine every process shares the same cores
(processor sharing across stations whose service demands differ by 1000×: a GetProfile waits
behind a chat turn's prompt), the SLOs are p99s (a distribution, not a mean), and the first
bottleneck should emerge from the placement rather than be assumed. Formulas still check it: a
single station against M/M/1's closed form (tests/unit/test_capacity_model.py).

The model:
- a call of a route is a sequence of CPU bursts, one per component it costs (Envoy, the service,
  Triton's model, Postgres, NATS, ...), each of the measured CPU ms (exponentially distributed
  around it), plus a delay: what the route's call waits besides CPU at low load (network,
  commits' fsync, the engine's per-token pacing, a wakeup behind another process, a collection),
  lognormal, its median the measured p50 less the CPU and its spread from the route alone's
  p99 against its p50 (so the low-load tail is measured, not assumed);
- a component is `replicas` × `slots` servers: a Python service's event loop runs one burst at
  a time per replica (the GIL), Envoy one per worker thread, Postgres one per backend; chat_lm's
  engine and argon2 spread a burst over their `parallel` threads;
- components run on pools of cores: on this machine one pool of 2 cores shared by all; past one
  machine each component on cores of its own. A pool shares its cores round-robin in quanta of
  `quantum_ms` (the scheduler's time slice), which approximates processor sharing;
- calls arrive as a Poisson process at the mix's shares (the topology's SLO rates); on this
  machine the mesh's idle work and the load generator's CPU run beside them.
It reports per route the calls served, p50 and p99, and per component and pool the utilization
(the busiest is the first bottleneck). What it leaves out: memory, the network's bandwidth,
batching gains in Triton (measured small here), retries, and Postgres's lock waits.

  bin/aimesh bench capacity_model validate --load bench/results/RUN.json ...
  bin/aimesh bench capacity_model plan --load RUN.json ...   # 1x / 10x / 100x sizing, docs/scale.md's figures
"""
from __future__ import annotations

import argparse
import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import simpy

RESULTS = Path(__file__).parent / "results"
COSTS = RESULTS / "costs.json"


@dataclass(frozen=True)
class Component:
    replicas: int = 1
    slots: int = 1            # bursts one replica runs at once
    parallel: int = 1         # cores one burst spreads over (chat_lm's engine threads)
    pool: str = "host"


@dataclass(frozen=True)
class Placement:
    pools: dict[str, float]                      # pool -> cores
    components: dict[str, Component]
    quantum_ms: float = 2.0

    def component(self, name: str) -> Component:
        return self.components.get(name, Component())


@dataclass(frozen=True)
class Route:
    name: str
    rate: float                                   # calls a second
    bursts: tuple[tuple[str, float], ...]         # (component, CPU ms), in call order
    delay_ms: float = 0.0                         # what the call waits besides CPU: its median
    delay_sigma: float = 0.0                      # its spread (lognormal; 0: always delay_ms)
    background: tuple[tuple[str, float], ...] = ()   # work it sets off that nobody waits for (events)
    first_reply_before: str = ""                  # a stream: its time is up to this burst (its first message)


@dataclass
class Result:
    seconds: float
    latencies_ms: dict[str, list[float]] = field(default_factory=dict)
    busy_ms: dict[str, float] = field(default_factory=dict)    # component -> CPU ms run
    pool_busy_ms: dict[str, float] = field(default_factory=dict)

    def p(self, route: str, q: float) -> float:
        values = self.latencies_ms.get(route)
        return float(np.percentile(values, q)) if values else math.inf

    def throughput(self, route: str) -> float:
        return len(self.latencies_ms.get(route, ())) / self.seconds


Z99 = 2.3263   # the standard normal's 99th percentile

CLIENT = "client"   # the load generator: one process, one burst at a time (gevent)
ORDER = ["envoy", "user", "user:argon2", "search", "recommend", "chat", "notify", "content", "triton:text_embedding",
         "triton:recommender", "triton:chat_lm", "triton:moderation", "postgres", "nats"]


def wall_ms(bursts) -> float:
    """How long (component, CPU ms) bursts take here, one after another with nothing else running:
    a burst spread over threads (argon2's, chat_lm's) takes less than its CPU."""
    here, total = local(), 0.0
    for name, ms in bursts:
        component = here.component(name)
        total += ms / max(1, min(component.parallel, int(here.pools[component.pool])))
    return total


def delay_spread(costs: dict) -> float:
    """The delays' lognormal spread: from each route alone, the one that puts its p99 where measured,
    and of those the median (a p99 of a hundred calls is nearly their maximum: one route's is noise,
    what the routes share is the machine's)."""
    sigmas = []
    for route in costs["routes"].values():
        cpu = wall_ms(route["cpu_ms"].items())
        if route["p50_ms"] > cpu and route["p99_ms"] > route["p50_ms"]:
            sigmas.append(math.log((route["p99_ms"] - cpu) / (route["p50_ms"] - cpu)) / Z99)
    return float(np.median(sigmas)) if sigmas else 0.0


def routes_from_costs(costs: dict, rates: dict[str, float], min_ms: float = 0.05,
                      p50_ms: dict[str, float] | None = None, with_client: bool = False) -> list[Route]:
    """The mix's routes at `rates` (route -> calls/s) with their measured bursts (in the order the
    call crosses them), background work and delay: the p50 at low load (the route alone, or
    `p50_ms`, both measured here) less the time the CPU before it takes here (a burst spread over
    threads takes less than its CPU), spread so that the route alone's p99 is its 99th percentile.
    `with_client`: the load generator's CPU first, a burst of its own (on this machine it shares
    the cores with the mesh)."""
    out, sigma = [], delay_spread(costs)
    for name, rate in rates.items():
        measured = dict(costs["routes"][name])
        if p50_ms and name in p50_ms:
            measured["p50_ms"] = p50_ms[name]
        background = set(measured.get("background", ()))
        bursts = tuple((c, ms) for c, ms in measured["cpu_ms"].items()
                       if ms >= min_ms and c in ORDER and c not in background)
        if with_client:
            bursts = ((CLIENT, measured["client_cpu_ms"]),) + bursts
        first = measured.get("first_reply_before", "")
        names = [c for c, _ in bursts]
        waited = bursts[:names.index(first)] if first in names else bursts
        cpu = wall_ms(waited)
        out.append(Route(name, rate, bursts, delay_ms=max(measured["p50_ms"] - cpu, 0.0),
                         delay_sigma=sigma,
                         background=tuple((c, ms) for c, ms in measured["cpu_ms"].items()
                                          if c in background and ms >= min_ms),
                         first_reply_before=first))
    return out


IDLE_BURST_MS = 1.0   # background work comes in small bursts: a health check, a scrape, a poll


def simulate(placement: Placement, routes: list[Route], seconds: float = 60.0, warmup_s: float = 5.0,
             seed: int = 1, cv: float = 0.5, idle: dict[str, float] | None = None) -> Result:
    """Run the mix for `seconds` after `warmup_s`. A burst's CPU varies around its measured mean
    with coefficient of variation `cv` (gamma distributed; 1 is exponential, as M/M/1 assumes):
    a code path's cost varies less than that (argon2's hardly at all). `idle`: pool -> cores its
    processes keep busy with no calls, run beside the mix as bursts of IDLE_BURST_MS."""
    env = simpy.Environment()
    rng = random.Random(seed)
    pools = {name: simpy.Resource(env, capacity=max(int(cores), 1)) for name, cores in placement.pools.items()}
    servers = {name: simpy.Resource(env, capacity=c.replicas * c.slots) for name, c in placement.components.items()}
    result = Result(seconds=seconds)
    counting = {"on": False}
    quantum = placement.quantum_ms / 1000

    def run_on(pool: str, work_s: float, owner: str):
        """`work_s` of CPU on `pool`, a quantum at a time, each quantum queued behind the others."""
        while work_s > 1e-12:
            piece = min(quantum, work_s)
            with pools[pool].request() as core:
                yield core
                yield env.timeout(piece)
            work_s -= piece
            if counting["on"]:
                result.busy_ms[owner] = result.busy_ms.get(owner, 0.0) + piece * 1000
                result.pool_busy_ms[pool] = result.pool_busy_ms.get(pool, 0.0) + piece * 1000

    def burst(name: str, cpu_ms: float):
        component = placement.component(name)
        work_s = rng.gammavariate(1 / cv ** 2, cv ** 2) * cpu_ms / 1000
        with servers.setdefault(name, simpy.Resource(env, capacity=1)).request() as slot:
            yield slot
            if component.parallel == 1:
                yield from run_on(component.pool, work_s, name)
            else:
                yield env.all_of([env.process(run_on(component.pool, work_s / component.parallel, name))
                                  for _ in range(component.parallel)])

    def call(route: Route):
        started = env.now
        delay_s = route.delay_ms * math.exp(route.delay_sigma * rng.gauss(0, 1)) / 1000

        def answered() -> None:
            if started >= warmup_s:
                result.latencies_ms.setdefault(route.name, []).append((env.now - started) * 1000)
        for name, cpu_ms in route.bursts:
            if name == route.first_reply_before:
                yield env.timeout(delay_s)
                answered()
            yield from burst(name, cpu_ms)
        if not route.first_reply_before:
            yield env.timeout(delay_s)
            answered()
        for name, cpu_ms in route.background:
            env.process(burst(name, cpu_ms))

    def arrivals(route: Route):
        while True:
            yield env.timeout(rng.expovariate(route.rate))
            env.process(call(route))

    def background(pool: str, cores: float):
        while True:
            yield env.timeout(rng.expovariate(cores * 1000 / IDLE_BURST_MS))
            env.process(run_on(pool, IDLE_BURST_MS / 1000, "idle"))

    def measuring():
        yield env.timeout(warmup_s)
        counting["on"] = True

    for route in routes:
        if route.rate > 0:
            env.process(arrivals(route))
    for pool, cores in (idle or {}).items():
        if cores > 0:
            env.process(background(pool, cores))
    env.process(measuring())
    env.run(until=warmup_s + seconds)
    return result


def utilization(placement: Placement, result: Result) -> dict[str, float]:
    """Busy share per component (of its replicas' cores) and per pool, over the measured time."""
    out = {}
    for name, busy in result.busy_ms.items():
        c = placement.component(name)
        cores = min(c.replicas * c.slots * c.parallel, placement.pools[c.pool])
        out[name] = busy / 1000 / result.seconds / cores
    for pool, busy in result.pool_busy_ms.items():
        out[f"pool {pool}"] = busy / 1000 / result.seconds / placement.pools[pool]
    return out


# --- this machine ---------------------------------------------------------------------------------

def local(cores: float = 2.0) -> Placement:
    """The local topology: every process on one pool of `cores`."""
    return Placement(pools={"host": cores}, components={
        "envoy": Component(slots=2),                     # worker threads: one per core
        "search": Component(replicas=2), "recommend": Component(replicas=2),
        "content": Component(replicas=2),
        "postgres": Component(slots=16),                 # a backend per connection
        # a password check is argon2-cffi's 4 lanes on 4 threads, and user-svc runs cores / 4 at
        # once (at least one: services/user/accounts.py)
        "user:argon2": Component(slots=max(1, int(cores) // 4), parallel=4),
        "triton:chat_lm": Component(parallel=2),         # the engine's 2 threads
    })


def local_idle(costs: dict) -> dict[str, float]:
    """What the local mesh's processes keep busy with no calls (costs.json's idle_cores), on its pool."""
    return {"host": sum(costs.get("idle_cores", {}).values())}


def slo_rates(topology_file: Path | None = None, multiple: float = 1.0) -> tuple[dict[str, float], dict]:
    from aimesh import topology
    topo = topology.load(topology_file, port_offset=0)
    return ({route: slo.load_rps * multiple for route, slo in topo.slos.items()}, topo.slos)


def verdict(result: Result, slos) -> list[str]:
    return [f"{route} p99 {result.p(route, 99):.0f} ms > {slo.p99_s * 1000:.0f}"
            for route, slo in slos.items() if result.p(route, 99) > slo.p99_s * 1000]


def slo_share(p99_ms: dict[str, float], slos) -> float:
    """The worst route's p99 as a share of its SLO's: past 1, an SLO is broken."""
    return max(p99_ms[route] / (slo.p99_s * 1000) for route, slo in slos.items() if route in p99_ms)


def crossing(steps: list[tuple[float, float]]) -> float:
    """The multiple of the mix where the worst p99 reaches its SLO, linear between the steps either
    side (steps 14-50% apart: the last step held says less than the 20% the validation asks); the
    last multiple if it never does. A step broken otherwise (errors: share inf) ends at the one before."""
    before = (0.0, 0.0)
    for multiple, share in steps:
        if share > 1:
            if math.isinf(share):
                return before[0]
            return before[0] + (multiple - before[0]) * (1 - before[1]) / (share - before[1])
        before = (multiple, share)
    return before[0]


SEEDS = 3


def capacity(placement: Placement, costs: dict, multiples: list[float], seconds: float,
             p50_ms: dict[str, float] | None = None, with_client: bool = False,
             idle: dict[str, float] | None = None) -> tuple[float, float, dict]:
    """The largest multiple of the SLO mix whose every p99 holds in each of SEEDS runs (a p99 of a
    route with few calls a second is noisy), where the worst of those runs' p99s reaches its SLO
    (`crossing`), and each multiple's first run."""
    results, held, shares = {}, 0.0, []
    for multiple in multiples:
        rates, slos = slo_rates(multiple=multiple)
        routes = routes_from_costs(costs, rates, p50_ms=p50_ms, with_client=with_client)
        runs = [simulate(placement, routes, seconds, seed=seed, idle=idle) for seed in range(1, SEEDS + 1)]
        results[multiple] = runs[0]
        shares.append((multiple, max(slo_share({r: run.p(r, 99) for r in rates}, slos) for run in runs)))
        if shares[-1][1] > 1:
            break
        held = multiple
    return held, crossing(shares), results


def measured_share(step: dict, slos) -> float:
    """A load-test step's worst p99 as a share of its SLO's; inf if it broke otherwise (errors,
    availability)."""
    if any(f["errors"] or any(not why.startswith("p99") for why in f["broke"]) for f in step["routes"].values()):
        return math.inf
    return slo_share({route: f["p99_ms"] for route, f in step["routes"].items()}, slos)


# A route-step with fewer calls says little about its p50 (chat.Ask: a few a step): the calibration
# takes the route alone's p50 instead, and the validation reports it apart
ENOUGH_CALLS = 20


def validate(args) -> None:
    """The model's prediction for this machine against each load test's measurements."""
    costs = json.loads(Path(args.costs).read_text())
    summaries = [validate_one(costs, Path(path), args.seconds) for path in args.load]
    if len(summaries) > 1:
        print(f"\ncosts {costs['measured']}: {'load test':<28} {'measured':>8} {'model':>6} {'error':>6} "
              f"{'p50 err':>8} {'p99 factor':>10}")
        for s in summaries:
            print(f"{'':17}{s['load']:<28} {s['measured']:7.2f}x {s['model']:5.2f}x {s['error']:+6.0%} "
                  f"{s['p50']:8.0%} {s['p99']:10.2f}")


def validate_one(costs: dict, load: Path, seconds: float) -> dict:
    measured = json.loads(load.read_text())
    placement = local()
    print(f"costs: {costs['measured']} on {costs['machine']}\nload test: {load.name}, {measured['measured']}\n")
    print(f"{'step':>5} {'route':<26} {'rate':>6} {'p50 meas':>9} {'p50 model':>9} {'err':>6} "
          f"{'p99 meas':>9} {'p99 model':>9}")
    # Calibration: each route's delay from the load test's first (lightest) step, where the mix runs
    # beside it; the costs' own p50 is of the route alone, warmer (a service kept busy answers
    # sooner than one woken now and then). The other steps validate.
    calibration = measured["steps"][0]
    floor = {route: f["p50_ms"] for route, f in calibration["routes"].items() if f["calls"] >= ENOUGH_CALLS}
    print(f"calibrated on the {calibration['multiple']}x step's p50s: {floor}\n")
    # The load generator and the mesh's idle work share this machine's cores: the model runs both
    idle = local_idle(costs)
    print(f"beside the mix: the mesh's idle work {idle['host']:.2f} cores, the load generator's CPU per call\n")
    errors, sampled, tails = [], [], []
    for step in measured["steps"][1:]:
        rates = {route: f["rate"] for route, f in step["routes"].items()}
        result = simulate(placement, routes_from_costs(costs, rates, p50_ms=floor, with_client=True),
                          seconds, idle=idle)
        for route, f in step["routes"].items():
            model = result.p(route, 50)
            error = model / f["p50_ms"] - 1
            errors.append(abs(error))
            if f["calls"] >= ENOUGH_CALLS:
                sampled.append(abs(error))
            tails.append(max(result.p(route, 99) / f["p99_ms"], f["p99_ms"] / result.p(route, 99)))
            print(f"{step['multiple']:>4}x {route:<26} {f['rate']:6.1f} {f['p50_ms']:9.0f} {model:9.0f} "
                  f"{error:+6.0%} {f['p99_ms']:9.0f} {result.p(route, 99):9.0f}"
                  + ("" if f["calls"] >= ENOUGH_CALLS else f"  ({f['calls']} calls)"))
        busiest = sorted(utilization(placement, result).items(), key=lambda kv: -kv[1])[:3]
        busy = sum(step.get("cpu_cores", {}).values())
        print("      busiest: " + ", ".join(f"{k} {v:.0%}" for k, v in busiest)
              + (f"; the machine measured {busy / placement.pools['host']:.0%} busy" if busy else ""))
    multiples = measured.get("multiples") or [s["multiple"] for s in measured["steps"]]   # the model may hold further
    held, reached, _ = capacity(placement, costs, multiples, seconds, floor, with_client=True, idle=idle)
    _, slos = slo_rates()
    mix = sum(slo.load_rps for slo in slos.values())
    measured_reach = crossing([(s["multiple"], measured_share(s, slos)) for s in measured["steps"]])
    print(f"\ncapacity within every SLO: measured {measured['held']}x ({measured['held'] * mix:.1f} calls/s), "
          f"broke at {measured['broke_at']}x; model {held}x ({held * mix:.1f} calls/s)")
    print(f"where the worst p99 reaches its SLO (between the steps either side): measured {measured_reach:.2f}x "
          f"({measured_reach * mix:.1f} calls/s), model {reached:.2f}x ({reached * mix:.1f} calls/s): "
          f"{reached / measured_reach - 1:+.0%}")
    print(f"p50 error: median {np.median(errors):.0%}, max {max(errors):.0%} over {len(errors)} route-steps; "
          f"of the {len(sampled)} with {ENOUGH_CALLS} calls or more: median {np.median(sampled):.0%}, "
          f"max {max(sampled):.0%}, within 20% for {sum(e <= 0.2 for e in sampled)}")
    print(f"p99 off by a factor of: median {np.median(tails):.2f}, within 1.5x for {sum(t <= 1.5 for t in tails)} "
          f"and within 2x for {sum(t <= 2 for t in tails)} of {len(tails)}\n")
    return {"load": load.name, "measured": measured_reach, "model": reached, "error": reached / measured_reach - 1,
            "p50": float(np.median(sampled)), "p99": float(np.median(tails))}


# --- past one machine -------------------------------------------------------------------------------

TARGET_UTILIZATION = 0.5      # size for this busy share: this machine missed its p99s at 63% busy (measured)
PLAN = RESULTS / "scale-plan.json"
FIGURE = Path(__file__).parents[1] / "docs" / "figures" / "capacity-p99.png"


@dataclass(frozen=True)
class Shape:
    """How a component scales: cores per replica, bursts at once per replica, the fewest replicas."""
    cores: int = 1
    slots: int = 1
    parallel: int = 1
    min_replicas: int = 2      # two: one may be restarted or rescheduled at any time


SHAPES = {
    "envoy": Shape(cores=2, slots=2),                      # two worker threads
    "postgres": Shape(cores=1, slots=4, min_replicas=1),   # one primary: its cores are what grows
    "nats": Shape(min_replicas=3),                         # a JetStream cluster of three
    "triton:chat_lm": Shape(cores=2, parallel=2),          # the engine's two threads
    "user:argon2": Shape(parallel=4),                      # cores in user-svc's pods for the password check
}


def demand_cores(costs: dict, rates: dict[str, float]) -> dict[str, float]:
    """Cores each component keeps busy at `rates`: the utilization law, U = X * D."""
    busy: dict[str, float] = {}
    for route, rate in rates.items():
        for component, ms in costs["routes"][route]["cpu_ms"].items():
            if component in ORDER:   # background work too: it takes the same cores
                busy[component] = busy.get(component, 0.0) + rate * ms / 1000
    return busy


def sized(costs: dict, rates: dict[str, float]) -> Placement:
    """Each component on cores of its own, with replicas for TARGET_UTILIZATION at `rates`
    (Postgres: one primary whose cores grow)."""
    pools, components = {}, {}
    for component, cores in demand_cores(costs, rates).items():
        shape = SHAPES.get(component, Shape())
        needed = cores / (TARGET_UTILIZATION * shape.cores)
        if component == "postgres":
            size = max(2, math.ceil(cores / TARGET_UTILIZATION))
            pools[component] = size
            components[component] = Component(slots=size * shape.slots, pool=component)
            continue
        replicas = max(shape.min_replicas, math.ceil(needed))
        pools[component] = replicas * shape.cores
        components[component] = Component(replicas=replicas, slots=shape.slots, parallel=shape.parallel,
                                           pool=component)
    return Placement(pools=pools, components=components, quantum_ms=5.0)


OVERLAYS = Path(__file__).parents[1] / "deploy" / "k8s" / "overlays"
TRITON_POD_CORES = 8     # one Triton pod serves every model: its model instances share a pod's cores
# Kubernetes workloads that scale with a component (the canary's v2 keeps its share of v1's).
WORKLOADS = {"user": "user", "search": "search", "recommend": "recommend-v1", "chat": "chat",
             "content": "content", "envoy": "envoy"}
AUTOSCALED = {"search", "recommend-v1", "recommend-v2", "content", "envoy"}   # the base's HPAs
SINGLE = {"notify": "Subscribe reaches only the subscribers of the instance that took the event"}


def k8s_replicas(placement: Placement) -> dict[str, int]:
    """Deployment -> replicas for a sized placement."""
    out = {WORKLOADS[name]: c.replicas for name, c in placement.components.items() if name in WORKLOADS}
    if "user:argon2" in placement.components:   # the password check's cores are user-svc pods too
        out["user"] = out.get("user", 0) + placement.components["user:argon2"].replicas
    if "recommend-v1" in out:
        out["recommend-v2"] = max(1, math.ceil(out["recommend-v1"] * 10 / 90))   # the topology's 90/10
    triton = sum(placement.pools[name] for name in placement.components if name.startswith("triton:"))
    out["triton"] = max(1, math.ceil(triton / TRITON_POD_CORES))
    return dict(sorted(out.items()))


def write_overlay(scale: int, placement: Placement) -> Path:
    """deploy/k8s/overlays/scale-<N>x: the base with the replicas the model sized, and each
    autoscaler's floor there (its ceiling twice that); Postgres's CPU request its cores."""
    replicas = k8s_replicas(placement)
    patches = []
    for name, count in replicas.items():
        if name in AUTOSCALED:
            patches.append({"target": {"kind": "HorizontalPodAutoscaler", "name": name}, "patch": json.dumps([
                {"op": "replace", "path": "/spec/minReplicas", "value": count},
                {"op": "replace", "path": "/spec/maxReplicas", "value": 2 * count}])})
    postgres_cores = int(placement.pools.get("postgres", 1))
    patches.append({"target": {"kind": "StatefulSet", "name": "postgres"}, "patch": json.dumps([
        {"op": "replace", "path": "/spec/template/spec/containers/0/resources/requests/cpu",
         "value": str(postgres_cores)}])})
    overlay = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
               "resources": ["../../base"], "components": ["../../components/cert-manager"],
               "replicas": [{"name": name, "count": count} for name, count in replicas.items()],
               "patches": patches}
    folder = OVERLAYS / f"scale-{scale}x"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "kustomization.yaml"
    import yaml
    path.write_text(f"# Written by `bin/aimesh bench capacity_model plan` (never by hand): the replicas the\n"
                    f"# capacity model sizes for {scale}x this machine's capacity at the topology's SLOs\n"
                    f"# (docs/scale.md), from bench/results/costs.json. Re-run it when the costs change.\n"
                    + yaml.safe_dump(overlay, sort_keys=False))
    return path


def plan(args) -> None:
    """1x (this machine's capacity), 10x and 100x: a placement sized for each, simulated at its
    rate (p50/p99 per route, utilization, the first bottleneck), p99 against rate for each, and
    the replica counts for Kubernetes (bench/results/scale-plan.json)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    costs = json.loads(Path(args.costs).read_text())
    base_rates, slos = slo_rates()
    # 1x: this machine's capacity as the load tests measured it (the median of `--load`'s runs:
    # one run's varies by a step or more); the model's own figure beside it
    loads = [Path(path) for path in args.load]
    for load in loads:
        if not load.exists():
            raise SystemExit(f"no {load}: measure this machine's capacity first (bin/aimesh load --json {load})")
    runs = [json.loads(load.read_text()) for load in loads]
    multiples = runs[0].get("multiples") or [s["multiple"] for s in runs[0]["steps"]]
    modelled, _, _ = capacity(local(), costs, multiples, args.seconds, with_client=True, idle=local_idle(costs))
    held = float(np.median([run["held"] for run in runs]))
    if not held:
        raise SystemExit("no SLO holds even at 0.5x the mix on this machine: check the costs")
    one_x = {route: rate * held for route, rate in base_rates.items()}
    mix = sum(one_x.values())
    print(f"this machine (2 shared cores) holds the SLO mix at {held}x = {mix:.1f} calls/s "
          f"(measured: the median of {[run['held'] for run in runs]}; the model alone: {modelled}x)\n")
    plans, curves = {}, {}
    for scale in (1, 10, 100):
        rates = {route: rate * scale for route, rate in one_x.items()}
        placement = sized(costs, rates)
        result = simulate(placement, routes_from_costs(costs, rates), args.seconds / max(1, scale / 10))
        used = utilization(placement, result)
        first = max((k for k in used if not k.startswith("pool ")), key=lambda k: used[k])
        broken = verdict(result, slos)
        total = sum(placement.pools.values())
        print(f"{scale:>3}x: {mix * scale:8.1f} calls/s on {total:.0f} cores; first bottleneck {first} "
              f"({used[first]:.0%} busy); SLOs {'held' if not broken else 'BROKEN: ' + '; '.join(broken)}")
        for name, c in sorted(placement.components.items()):
            print(f"       {name:<22} {c.replicas:>4} x {SHAPES.get(name, Shape()).cores} cores"
                  f"  ({placement.pools[name]:.0f} cores, {used.get(name, 0):.0%} busy)")
        for route in rates:
            print(f"       {route:<26} p50 {result.p(route, 50):7.1f} ms  p99 {result.p(route, 99):7.1f} ms"
                  f"  (SLO {slos[route].p99_s * 1000:.0f} ms)")
        plans[f"{scale}x"] = {
            "calls_per_second": round(mix * scale, 1), "cores": total, "first_bottleneck": first,
            "slos_held": not broken,
            "replicas": {name: c.replicas for name, c in sorted(placement.components.items())},
            "k8s_replicas": k8s_replicas(placement),
            "postgres_cores": placement.pools.get("postgres", 0),
            "p99_ms": {route: round(result.p(route, 99), 1) for route in rates},
            "p50_ms": {route: round(result.p(route, 50), 1) for route in rates}}
        # p99 against rate for this placement: the worst route's p99 as a share of its SLO
        xs, ys = [], []
        for share in (0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0):
            at = {route: rate * share for route, rate in rates.items()}
            swept = simulate(placement, routes_from_costs(costs, at), args.seconds / max(1, scale / 5), seed=3)
            xs.append(mix * scale * share)
            ys.append(max(swept.p(route, 99) / (slos[route].p99_s * 1000) for route in rates))
        curves[f"{scale}x"] = (xs, ys)
        if scale > 1:
            print(f"       wrote {write_overlay(scale, placement).relative_to(OVERLAYS.parents[2])}")
        print()
    PLAN.write_text(json.dumps({"costs_measured": costs["measured"], "target_utilization": TARGET_UTILIZATION,
                                "local_capacity_multiple": held, "modelled_local_capacity_multiple": modelled,
                                "plans": plans}, indent=1) + "\n")
    figure, axes = plt.subplots(figsize=(7, 4))
    for label, (xs, ys) in curves.items():
        axes.plot(xs, ys, marker="o", label=f"placement for {label}")
    axes.axhline(1.0, color="grey", linestyle="--", label="p99 = its SLO")
    axes.set(xscale="log", xlabel="calls a second (the SLO mix)", ylabel="worst route's p99 / its SLO p99",
             title="Predicted p99 against rate (bench/capacity_model.py)")
    axes.set_ylim(0, 3)
    axes.legend()
    figure.tight_layout()
    FIGURE.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(FIGURE, dpi=100)
    print(f"wrote {PLAN} and {FIGURE}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["validate", "plan"])
    parser.add_argument("--costs", default=str(COSTS))
    parser.add_argument("--load", nargs="+", required=True,
                        help="load tests (bench/load.py --json): validate against each; plan from their median")
    parser.add_argument("--seconds", type=float, default=60.0, help="simulated time per run")
    args = parser.parse_args()
    if args.mode == "validate":
        validate(args)
    else:
        plan(args)


if __name__ == "__main__":
    main()
