"""Load test with locust: a realistic mix through the gateway, stepped up until an SLO breaks.

Each simulated user (a locust User with gRPC calls, one call a second) logs in as one of the
load accounts and does what the topology's `slos:` block weighs: the routes' shares are their
`at` rates, so at step 1x every route gets the load its SLO is stated at. Log in, GetProfile,
RecordPurchase, Search, Recommend, a chat turn (Ask, 8 tokens at most) and ListNotifications.
A call's time is the whole call's, or a stream's first message's (chat's first piece), as the
SLOs count them; Recommend's popular-items fallback and chat's retrieval-only answer are
counted against availability.

  bin/aimesh load [--users N] [--minutes M] [--step-s S]     # capacity: steps up to N users
  bin/aimesh load --soak --minutes 10 [--warmup W] [--rate R]   # soak at R calls/s (default:
                                                 # half the SLOs' stated load), judged after W
                                                 # minutes' warm-up at the same rate (default 10)

Capacity: steps of 0.5x, 1x, 1.5x, ... 3.5x, 4x, 5x, ... of the SLO loads (the mix at 1x is about 21
calls a second) after 40 s at 1x that warm a fresh mesh (not judged), each `--step-s` long after a
few seconds' ramp; stops at the first step where a route misses its SLO (or has an error), and
prints per route its rate at the last step within every SLO, where it broke and why, and the load
generator's own CPU.

Soak: a constant rate for `--warmup` minutes and then `--minutes` more; every 10 s the resident
memory (all of it, and the anonymous part: heaps, without shared buffers or mapped files) and open
file descriptors of every component and the number of Postgres connections; prints errors and each
component's growth over the minutes after the warm-up, compared by its floor over a minute (a
moment's peak is not growth), fails past 5% after a warm-up (or at any error), and writes a PNG
of RSS and fds over the whole run (soak.png in the state dir). Why a warm-up as long as the soak:
Prometheus's head block and chat_lm's prompt cache take their working memory over the first ~10
minutes at half capacity (measured: Prometheus +14% from minute 5 to 20 of a 20-minute soak,
within 1.5% from minute 10; Triton +5% over minutes 5-10 of a 10-minute one). NATS's JetStream
write cache grows by steps until each stream's 8 MiB block is full, hours at this rate
(bench/nats_memory.py shows where it stops), so NATS may step in the judged minutes.

Runs its own mesh (bench/topology.yaml: per-user limits out of reach) in
/tmp/aimesh-bench-load-state on AIMESH_PORT_OFFSET=2000, or, with --attach, the mesh that
AIMESH_STATE / AIMESH_PORT_OFFSET / AIMESH_TOPOLOGY name (the tests' short soak).
"""
# locust patches the standard library with gevent when imported: before anything else
import locust  # noqa: F401  isort: skip
import grpc.experimental.gevent as grpc_gevent  # isort: skip

grpc_gevent.init_gevent()

import argparse  # noqa: E402
import collections  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import gevent  # noqa: E402
import grpc  # noqa: E402
import psutil  # noqa: E402
from helpers.common import machine  # noqa: E402
from helpers.cpu import CpuMeter  # noqa: E402
from locust import User, constant_throughput  # noqa: E402
from locust.env import Environment  # noqa: E402

from aimesh import demo, infra  # noqa: E402
from aimesh.chat.v1 import chat_pb2, chat_pb2_grpc  # noqa: E402
from aimesh.common.v1 import common_pb2  # noqa: E402
from aimesh.harness import MeshUnderTest  # noqa: E402
from aimesh.notify.v1 import notify_pb2, notify_pb2_grpc  # noqa: E402
from aimesh.recommend.v1 import recommend_pb2, recommend_pb2_grpc  # noqa: E402
from aimesh.search.v1 import search_pb2, search_pb2_grpc  # noqa: E402
from aimesh.user.v1 import user_pb2, user_pb2_grpc  # noqa: E402

PASSWORD = "load-test-password"
QUERIES = ["Star Wars", "animated film for children", "film noir detective story",
           "romantic comedy from 1995", "horror movie with a killer", "science fiction"]
QUESTIONS = ["Suggest a film about space.", "What is a good comedy?", "A war film, please."]
HISTORY = [50, 172, 181]     # each load account's first purchases
MULTIPLES = [0.5, 1, 1.5, 2, 2.5, 3, 3.5, 4, 5, 6, 8, 10, 12, 16]
WARMUP_S = 40     # the capacity test's unjudged first stretch at 1x
RAMP_S = 5
TIMEOUT_S = 30


class Mix:
    """What the users share: the gateway channel, the accounts, and the fallbacks seen."""
    channel: grpc.Channel
    accounts: list[tuple[str, str]] = []    # (email, a token) per load account
    next_account = itertools.count()
    fallbacks: collections.Counter = collections.Counter()


def timed(user: User, route: str, call) -> None:
    """Run `call()` (which returns True for a fallback answer) and report it to locust."""
    started = time.perf_counter()
    error = None
    try:
        if call():
            Mix.fallbacks[route] += 1
    except grpc.RpcError as failure:
        error = failure
    user.environment.events.request.fire(
        request_type="grpc", name=route, response_time=(time.perf_counter() - started) * 1000,
        response_length=0, exception=error, context={})


class MeshUser(User):
    wait_time = constant_throughput(1)   # one call a second each

    def on_start(self) -> None:
        # a session: the account's token from the setup (a burst of logins at the start would
        # measure argon2, not the mix); the Login task logs in at its own rate
        self.email, token = Mix.accounts[next(Mix.next_account) % len(Mix.accounts)]
        self.users = user_pb2_grpc.UserServiceStub(Mix.channel)
        self.search = search_pb2_grpc.SearchServiceStub(Mix.channel)
        self.recommend = recommend_pb2_grpc.RecommendServiceStub(Mix.channel)
        self.chat = chat_pb2_grpc.ChatServiceStub(Mix.channel)
        self.notify = notify_pb2_grpc.NotificationServiceStub(Mix.channel)
        self.metadata = [("authorization", f"Bearer {token}")]

    def login(self) -> None:
        def call() -> bool:
            reply = self.users.Login(user_pb2.LoginRequest(email=self.email, password=PASSWORD),
                                     timeout=TIMEOUT_S)
            self.metadata = [("authorization", f"Bearer {reply.access_token}")]
            return False
        timed(self, "user.Login", call)

    def get_profile(self) -> None:
        timed(self, "user.GetProfile", lambda: not self.users.GetProfile(
            user_pb2.GetProfileRequest(), metadata=self.metadata, timeout=TIMEOUT_S).profile.user_id)

    def record_purchase(self) -> None:
        timed(self, "user.RecordPurchase", lambda: self.users.RecordPurchase(
            user_pb2.RecordPurchaseRequest(item_id=random.randint(1, 1682)),
            metadata=self.metadata, timeout=TIMEOUT_S) and False)

    def do_search(self) -> None:
        timed(self, "search.Search", lambda: self.search.Search(
            search_pb2.SearchRequest(query=random.choice(QUERIES), page_size=10),
            metadata=self.metadata, timeout=TIMEOUT_S) and False)

    def do_recommend(self) -> None:
        timed(self, "recommend.Recommend", lambda: self.recommend.Recommend(
            recommend_pb2.RecommendRequest(limit=10), metadata=self.metadata,
            timeout=TIMEOUT_S).source == common_pb2.SOURCE_FALLBACK)

    def ask(self) -> None:
        """Timed to the first piece (the SLO's p99 for a stream); read to the end."""
        started = time.perf_counter()
        first, fallback, error = None, False, None
        try:
            for reply in self.chat.Ask(chat_pb2.AskRequest(message=chat_pb2.UserMessage(
                    text=random.choice(QUESTIONS), max_tokens=8)), metadata=self.metadata,
                    timeout=TIMEOUT_S):
                first = first or time.perf_counter()
                if reply.HasField("end"):
                    fallback = reply.end.source == common_pb2.SOURCE_FALLBACK
        except grpc.RpcError as failure:
            error = failure
        if fallback:
            Mix.fallbacks["chat.Ask"] += 1
        self.environment.events.request.fire(
            request_type="grpc", name="chat.Ask",
            response_time=((first or time.perf_counter()) - started) * 1000,
            response_length=0, exception=error, context={})

    def list_notifications(self) -> None:
        timed(self, "notify.ListNotifications", lambda: self.notify.ListNotifications(
            notify_pb2.ListNotificationsRequest(page_size=20), metadata=self.metadata,
            timeout=TIMEOUT_S) and False)


ROUTES = {"user.Login": MeshUser.login, "user.GetProfile": MeshUser.get_profile,
          "user.RecordPurchase": MeshUser.record_purchase, "search.Search": MeshUser.do_search,
          "recommend.Recommend": MeshUser.do_recommend, "chat.Ask": MeshUser.ask,
          "notify.ListNotifications": MeshUser.list_notifications}


def weigh(slos) -> float:
    """Give each route its SLO's share of the calls; returns the mix's calls a second at 1x."""
    missing = set(ROUTES) - set(slos)
    if missing:
        raise SystemExit(f"the topology has no SLO for {', '.join(sorted(missing))}")
    # a list with each task as many times as its weight (quarter-calls a second: 0.25/s counts)
    MeshUser.tasks = [ROUTES[route] for route in ROUTES
                      for _ in range(max(1, round(slos[route].load_rps * 4)))]
    return sum(slos[route].load_rps for route in ROUTES)


# --- a step, judged against the SLOs ----------------------------------------------------------

def step(env: Environment, users: int, seconds: float, slos, meter: CpuMeter | None = None) -> dict[str, dict]:
    env.runner.start(users, spawn_rate=max(users, 1))
    gevent.sleep(RAMP_S)
    env.stats.reset_all()
    Mix.fallbacks.clear()
    me = psutil.Process()
    cpu_before, began = sum(me.cpu_times()[:2]), time.monotonic()
    if meter:
        meter.start()
    gevent.sleep(seconds)
    elapsed = time.monotonic() - began
    generator_cores = (sum(me.cpu_times()[:2]) - cpu_before) / elapsed
    figures = {}
    for route, slo in slos.items():
        entry = env.stats.entries.get((route, "grpc"))
        if entry is None or entry.num_requests == 0:
            continue
        calls, errors = entry.num_requests, entry.num_failures
        good = calls - errors - Mix.fallbacks[route]
        p99_s = entry.get_response_time_percentile(0.99) / 1000
        why = []
        if errors:
            why.append(f"{errors} errors")
        if good / calls < slo.availability:
            why.append(f"availability {good / calls:.2%} < {slo.availability:.2%}")
        if p99_s > slo.p99_s:
            why.append(f"p99 {p99_s * 1000:.0f} ms > {slo.p99_s * 1000:.0f} ms")
        figures[route] = {"rate": calls / elapsed, "calls": calls, "errors": errors,
                          "fallbacks": Mix.fallbacks[route], "p99_ms": p99_s * 1000,
                          "p50_ms": entry.get_response_time_percentile(0.5), "broke": why}
    figures["_generator_cores"] = {"cores": generator_cores}
    if meter:   # cores each component used over the step (the capacity model's utilization)
        figures["_cpu_cores"] = {name: ms / 1000 / elapsed for name, ms in meter.per_request_ms(1).items()}
    return figures


def capacity(env: Environment, slos, at_1x: float, max_users: int, step_s: float,
             budget_s: float, json_path: str | None = None, meter: CpuMeter | None = None) -> None:
    print(f"  mix at 1x: {at_1x:.1f} calls/s; steps of {step_s:.0f} s after {RAMP_S} s ramp\n")
    deadline = time.monotonic() + budget_s
    # A mesh just started answers slower for its first minute under load (connections, caches,
    # first calls): warm it at 1x first, unjudged, so the first step measures it as the others do
    step(env, max(1, round(at_1x)), WARMUP_S, slos)
    print(f"  warmed up: {WARMUP_S} s at 1x, not judged")
    last_good: dict[str, dict] = {}
    steps: list[dict] = []
    held, broke_at = 0.0, None
    for multiple in MULTIPLES:
        users = max(1, round(at_1x * multiple))
        if users > max_users or time.monotonic() + step_s + RAMP_S > deadline:
            print(f"  stopped before {multiple}x: the --users or --minutes limit")
            break
        figures = step(env, users, step_s, slos, meter)
        cores = figures.pop("_generator_cores")["cores"]
        used = figures.pop("_cpu_cores", {})
        print(f"  {multiple:>4}x  {users:>4} users  load generator {cores:.2f} cores"
              + (f"; the machine {sum(used.values()):.2f} cores busy" if used else ""))
        for route, f in figures.items():
            mark = "BROKE: " + ", ".join(f["broke"]) if f["broke"] else "ok"
            print(f"        {route:<26} {f['rate']:7.1f}/s  p50 {f['p50_ms']:6.0f} ms  "
                  f"p99 {f['p99_ms']:6.0f} ms  errors {f['errors']}  fallbacks {f['fallbacks']}  {mark}")
        for error in list(env.stats.errors.values())[:3]:
            print(f"        e.g. {error.name}: {error.error!r}"[:300])
        steps.append({"multiple": multiple, "users": users, "routes": figures, "cpu_cores": used})
        broken = [route for route, f in figures.items() if f["broke"]]
        if broken:
            print(f"\n  broke at {multiple}x ({users} users): {', '.join(broken)}")
            broke_at = multiple
            break
        last_good, held = figures, multiple
    print("\n  capacity within every SLO (the last step where all held):")
    for route, f in last_good.items():
        print(f"    {route:<26} {f['rate']:7.1f} calls/s  (p99 {f['p99_ms']:.0f} ms, 0 errors)")
    if last_good:
        print(f"    {'the whole mix':<26} {sum(f['rate'] for f in last_good.values()):7.1f} calls/s")
    if json_path:   # the capacity model's validation reads it (bench/capacity_model.py)
        Path(json_path).write_text(json.dumps({
            "measured": time.strftime("%Y-%m-%d"), "machine": machine(), "step_s": step_s,
            "multiples": MULTIPLES, "steps": steps, "held": held, "broke_at": broke_at}, indent=1) + "\n")


# --- soak ----------------------------------------------------------------------------------------

def sample(mesh: MeshUnderTest) -> dict[str, tuple[float, int, float]]:
    """component -> (RSS MiB, open fds, anonymous RSS MiB), with its children; and Postgres's
    connection count. RSS counts shared memory a process has touched (Postgres's shared buffers,
    mapped files) besides what it allocated; anonymous RSS (RssAnon) is its heaps alone, where a
    leak shows."""
    out = {}
    for name, processes in mesh.processes().items():
        rss, fds, anon = 0.0, 0, 0.0
        for process in processes:
            try:
                rss += process.memory_info().rss / 2**20
                fds += process.num_fds()
                anon += _anonymous_kib(process.pid) / 2**10
            except (psutil.Error, OSError):
                pass
        out[name] = (rss, fds, anon)
    out["postgres connections"] = (0.0, sum(_is_client_backend(p) for p in
                                            mesh.processes().get("postgres", [])[1:]), 0.0)
    return out


def _anonymous_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("RssAnon:"))


def _is_client_backend(process: psutil.Process) -> bool:
    """A backend serving a connection titles itself "postgres: <role> <database> <host> ..."."""
    try:
        return f" {infra.DATABASE} " in " ".join(process.cmdline())
    except psutil.Error:
        return False


WINDOW_S = 60   # memory is compared by its floor over this long: see floor()


def floor(series: list[tuple[float, dict]], start_s: float) -> dict[str, tuple[float, int, float]]:
    """Each component's lowest RSS and anonymous RSS over the WINDOW_S from `start_s` (its fds at the
    window's last sample). A moment's peak is not growth (a login's argon2 takes 64 MiB and gives it
    back: one sample taken then made user-svc look 190% bigger); a leak raises the floor too."""
    window = [s for t, s in series if start_s <= t <= start_s + WINDOW_S] or [series[-1][1]]
    return {name: (min(s[name][0] for s in window if name in s), latest[1],
                   min(s[name][2] for s in window if name in s))
            for name, latest in window[-1].items()}


GROWTH_LIMIT = 5.0   # % of RSS after the warm-up: the issue's "flat"


def soak(env: Environment, mesh: MeshUnderTest, rate: float, minutes: float, warmup: float,
         report: str | None = None) -> int:
    """The soak; returns the number of errors and of components that grew past GROWTH_LIMIT."""
    users = max(1, round(rate))
    env.runner.start(users, spawn_rate=users)
    print(f"  soak: {users} users (~{rate:.0f} calls/s), {warmup:g} min warm-up then {minutes:g} min judged")
    series: list[tuple[float, dict]] = []
    began = time.monotonic()
    while time.monotonic() - began < (warmup + minutes) * 60:
        series.append((time.monotonic() - began, sample(mesh)))
        gevent.sleep(10)
    series.append((time.monotonic() - began, sample(mesh)))
    errors = sum(e.num_failures for e in env.stats.entries.values())
    calls = sum(e.num_requests for e in env.stats.entries.values())
    print(f"  {calls} calls, {errors} errors")
    # With no warm-up (the tests' minute), past the start's own spikes.
    judged_from = warmup * 60 or min(60, minutes * 60 / 3)
    start, half = floor(series, judged_from), floor(series, judged_from + minutes * 30)
    last = floor(series, series[-1][0] - WINDOW_S)
    print(f"  judged from minute {judged_from / 60:g} to {series[-1][0] / 60:.1f}")
    print(f"  {'component':<22} {'RSS MiB':>8} {'last':>8} {'growth':>8} "
          f"{'anon MiB':>9} {'last':>8} {'growth':>8} {'2nd half':>9} {'fds':>5} {'last':>5}")

    def growth(before: float, after: float) -> float:
        return (after - before) / before * 100 if before else 0.0

    grew = []
    for name in last:
        (rss0, fd0, anon0), (rss1, fd1, anon1) = start.get(name, last[name]), last[name]
        anon_half = half.get(name, last[name])[2]
        if growth(rss0, rss1) > GROWTH_LIMIT:
            grew.append(name)
        print(f"  {name:<22} {rss0:8.1f} {rss1:8.1f} {growth(rss0, rss1):7.1f}% {anon0:9.1f} {anon1:8.1f} "
              f"{growth(anon0, anon1):7.1f}% {growth(anon_half, anon1):8.1f}% {fd0:5d} {fd1:5d}")
    print(f"  RSS grew past {GROWTH_LIMIT:g}% after the warm-up: {', '.join(grew)}" if grew else
          f"  every component's RSS within {GROWTH_LIMIT:g}% after the warm-up")
    plot(series, judged_from, mesh.state / "soak.png")
    if report:
        Path(report).write_text(json.dumps({"calls": calls, "errors": errors, "warmup_s": warmup * 60,
                                            "grew": grew, "series": series}))
    return errors + (len(grew) if warmup else 0)


def plot(series, judged_from: float, path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = [n for n in series[-1][1] if n != "postgres connections"]
    figure, (rss, fds) = plt.subplots(2, 1, figsize=(10, 8), sharex=True)
    minutes = [t / 60 for t, _ in series]
    for name in names:
        rss.plot(minutes, [s.get(name, (0, 0, 0))[0] for _, s in series], label=name)
        fds.plot(minutes, [s.get(name, (0, 0, 0))[1] for _, s in series], label=name)
    rss.set_ylabel("RSS (MiB)")
    rss.set_yscale("log")      # Triton and Postgres beside 60 MiB services
    fds.set_yscale("log")
    fds.set_ylabel("open file descriptors")
    fds.set_xlabel("minutes")
    for axis in (rss, fds):
        axis.axvspan(0, judged_from / 60, color="grey", alpha=0.15, label="warm-up" if axis is rss else None)
    rss.legend(fontsize="small", ncol=3)
    figure.savefig(path, dpi=80)
    print(f"  plot: {path}")


# --- the run -------------------------------------------------------------------------------------

def register(gateway: str, count: int) -> list[tuple[str, str]]:
    """The load accounts, pro tier (set by the demo admin: the mesh's own limits stay in force),
    each with a history and a token."""
    users = user_pb2_grpc.UserServiceStub(Mix.channel)
    admin = [("authorization", f"Bearer {demo.login(gateway, 'admin@demo.aimesh')}")]
    accounts = []
    for email in (f"load-{i}@load.test" for i in range(count)):
        try:
            users.Register(user_pb2.RegisterRequest(email=email, password=PASSWORD,
                                                    display_name="load"), timeout=TIMEOUT_S)
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.ALREADY_EXISTS:
                raise
        users.SetAccess(user_pb2.SetAccessRequest(email=email, tier=user_pb2.TIER_PRO),
                        metadata=admin, timeout=TIMEOUT_S)
        token = demo.login(gateway, email, PASSWORD)     # after SetAccess: a pro token
        for item_id in HISTORY:     # so Recommend answers from the model, not the cold start
            users.RecordPurchase(user_pb2.RecordPurchaseRequest(item_id=item_id), timeout=TIMEOUT_S,
                                 metadata=[("authorization", f"Bearer {token}")])
        accounts.append((email, token))
    return accounts


def main() -> int:
    parser = argparse.ArgumentParser(prog="aimesh load", description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=600, help="the most simulated users")
    parser.add_argument("--minutes", type=float, default=6, help="the longest the run may take")
    parser.add_argument("--step-s", type=float, default=20)
    parser.add_argument("--soak", action="store_true")
    parser.add_argument("--rate", type=float, default=0, help="soak: calls a second")
    parser.add_argument("--warmup", type=float, default=10, help="soak: minutes before the judged ones")
    parser.add_argument("--accounts", type=int, default=40)
    parser.add_argument("--json", help="write the figures to this file (each step's per route; "
                        "soak: the samples and counts)")
    parser.add_argument("--attach", action="store_true", help="use the running mesh named by "
                        "AIMESH_STATE/AIMESH_PORT_OFFSET/AIMESH_TOPOLOGY; start and stop none")
    args = parser.parse_args()
    mesh = MeshUnderTest.for_bench(state="/tmp/aimesh-bench-load-state")
    print(f"aimesh load: edge {mesh.gateway}\nmachine: {machine()}")
    if not args.attach:
        shutil.rmtree(mesh.state, ignore_errors=True)
    errors = 0
    try:
        if not args.attach:
            print(f"mesh up with demo data in {mesh.up(demo_data=True):.1f} s")
        Mix.channel = grpc.insecure_channel(mesh.gateway)
        Mix.accounts = register(mesh.gateway, args.accounts)
        at_1x = weigh(mesh.topo.slos)
        env = Environment(user_classes=[MeshUser])
        env.create_local_runner()
        if args.soak:
            errors = soak(env, mesh, args.rate or at_1x / 2, args.minutes, args.warmup, args.json)
        else:
            capacity(env, mesh.topo.slos, at_1x, args.users, args.step_s, args.minutes * 60, args.json,
                     CpuMeter(mesh))
        env.runner.quit()
    finally:
        if not args.attach:
            clean = mesh.down_and_report()
            errors += 0 if clean else 1
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
