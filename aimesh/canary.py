"""Automated canary analysis: `aimesh canary recommend --to v2 --steps 10,25,50,100 --interval 30s`.

At each step the canary version gets that share of the calls (a run-time override, applied to the
gateway's routes live). While the step lasts, the canary's window is compared with the stable
versions' over the same time: its bad share (server faults at the gateway, plus answers its
instances gave from a fallback: Recommend falls back rather than fails) and its p99 (the
instances' handling time) against the topology's SLOs for the service. Too bad, once it has
`--min-calls` calls: rolled back to 0% at once. Good at the step's end: promoted. Every decision,
with its numbers, is a JSON line in the state dir's canary log (`aimesh canary status`).
Interrupted, it leaves the weights at the last step that passed."""
from __future__ import annotations

import json
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import live, overrides, paths, topology
from .live import Counts
from .topology import Topology

CHECK_EVERY_S = 1.0
P99_TOLERANCE = 1.5     # the canary's p99 may exceed the SLO's only while within this of stable's
DEFAULT_BUDGET = 0.01   # bad share allowed when the service has no SLO


@dataclass(frozen=True)
class Judgement:
    verdict: str      # "rollback", "promote", or "wait"
    reason: str


@dataclass(frozen=True)
class Limits:
    """What the service's SLOs allow (the strictest of its routes')."""
    bad_share: float
    p99_s: float | None

    @classmethod
    def of(cls, topo: Topology, service: str) -> Limits:
        slos = [s for route, s in topo.slos.items() if route.split(".")[0] == service]
        return cls(bad_share=min((1 - s.availability for s in slos), default=DEFAULT_BUDGET),
                   p99_s=min((s.p99_s for s in slos), default=None))


def judge(canary: Counts, stable: Counts, limits: Limits, *, min_calls: int, step_over: bool) -> Judgement:
    """The decision on one window of the canary's and the stable versions' calls. Bad means over
    the SLO's budget *and* worse than stable by that budget: a canary is not blamed for what
    the stable version suffers too (a database outage). Latency decides only at a step's end."""
    if canary.calls < min_calls:
        return Judgement("wait", f"{canary.calls} of {min_calls} calls so far")
    share, stable_share = canary.bad_share, stable.bad_share
    if share > limits.bad_share and share > stable_share + limits.bad_share:
        return Judgement("rollback", f"bad share {share:.1%} ({canary.errors} errors, {canary.fallbacks} "
                         f"fallbacks in {canary.calls} calls) over the budget {limits.bad_share:.2%} "
                         f"and stable's {stable_share:.1%}")
    if not step_over:
        return Judgement("wait", "the step is not over")
    p99, stable_p99 = canary.quantile(0.99), stable.quantile(0.99)
    if (limits.p99_s is not None and p99 is not None and p99 > limits.p99_s
            and (stable_p99 is None or p99 > stable_p99 * P99_TOLERANCE)):
        return Judgement("rollback", f"p99 {p99 * 1000:g} ms over the SLO's {limits.p99_s * 1000:g} ms "
                         f"and stable's {'-' if stable_p99 is None else f'{stable_p99 * 1000:g} ms'}")
    return Judgement("promote", f"bad share {share:.1%} in {canary.calls} calls, within the budget "
                     f"{limits.bad_share:.2%}; p99 {'-' if p99 is None else f'{p99 * 1000:g} ms'}")


def log_path(state_dir: Path, service: str) -> Path:
    return Path(state_dir) / "canary" / f"{service}.log"


class Rollout:
    """One canary run, step by step; `run` returns 0 promoted to the last step, 1 rolled back
    (or held at the last safe step)."""

    def __init__(self, topo: Topology, state_dir: Path, service: str, canary: str, steps: list[int],
                 interval_s: float, min_calls: int, clock: Callable[[], float] = time.monotonic):
        self.topo, self.state_dir, self.service, self.canary = topo, Path(state_dir), service, canary
        self.steps, self.interval_s, self.min_calls, self.clock = steps, interval_s, min_calls, clock
        self.limits = Limits.of(topo, service)
        self.safe = self._weights_now()     # the last weights known good: those before the run

    def _weights_now(self) -> dict[str, int]:
        live_topo = overrides.load(self.state_dir).on(self.topo)
        return {i.version: i.weight for i in live_topo.services[self.service].instances if i.version}

    def _set(self, weights: dict[str, int]) -> None:
        overrides.change(self.state_dir, self.topo, lambda o: o.with_weights(self.service, weights))

    def _log(self, decision: str, step: int | None, reason: str, **numbers) -> None:
        path = log_path(self.state_dir, self.service)
        path.parent.mkdir(parents=True, exist_ok=True)
        entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "service": self.service,
                 "canary": self.canary, "step": step, "decision": decision, "reason": reason,
                 "weights": self._weights_now(), **numbers}
        with path.open("a") as log:
            log.write(json.dumps(entry) + "\n")
        print(describe(entry), flush=True)

    def _split(self) -> tuple[Counts, Counts]:
        counts = live.version_counts(self.topo, self.service)
        stable = Counts()
        for version, c in counts.items():
            if version != self.canary:
                stable = Counts(stable.calls + c.calls, stable.errors + c.errors,
                                stable.fallbacks + c.fallbacks, _add(stable.buckets, c.buckets))
        return counts[self.canary], stable

    def run(self) -> int:
        self._log("start", None, f"steps {self.steps}, {self.interval_s:g} s each, at least "
                  f"{self.min_calls} calls a step; budget {self.limits.bad_share:.2%}")
        try:
            for step in self.steps:
                if not self._step(step):
                    return 1
            self._log("done", self.steps[-1], f"{self.canary} takes {self.steps[-1]}% of the calls")
            return 0
        except (KeyboardInterrupt, Interrupted):
            self._set(self.safe)
            self._log("interrupted", None, "left at the last safe step")
            return 1

    def _step(self, step: int) -> bool:
        self._set(overrides.weights(self.topo, self.service, self.canary, step))
        canary_start, stable_start = self._split()
        started = self.clock()
        while True:
            time.sleep(CHECK_EVERY_S)
            canary, stable = self._split()
            window, stable_window = canary - canary_start, stable - stable_start
            over = self.clock() - started >= self.interval_s
            judgement = judge(window, stable_window, self.limits, min_calls=self.min_calls, step_over=over)
            numbers = {"canary_window": window.as_dict(), "stable_window": stable_window.as_dict()}
            if judgement.verdict == "rollback":
                self._set(overrides.weights(self.topo, self.service, self.canary, 0))
                self._log("rollback", step, judgement.reason, **numbers)
                return False
            if judgement.verdict == "promote":
                self.safe = self._weights_now()
                self._log("promote", step, judgement.reason, **numbers)
                return True
            if over and self.clock() - started >= self.interval_s * MAX_WAIT_INTERVALS:
                self._set(self.safe)
                self._log("hold", step, f"too little traffic to judge ({judgement.reason}) in "
                          f"{MAX_WAIT_INTERVALS} intervals: back at the last safe step", **numbers)
                return False


MAX_WAIT_INTERVALS = 3   # a step without enough calls waits this long, then goes back


class Interrupted(Exception):
    """SIGTERM, handled like Ctrl-C."""


def _add(a: tuple[tuple[float, float], ...], b: tuple[tuple[float, float], ...]):
    total = dict(a)
    for le, n in b:
        total[le] = total.get(le, 0) + n
    return tuple(sorted(total.items()))


def describe(entry: dict) -> str:
    step = f" at {entry['step']}%" if entry.get("step") is not None else ""
    weights = ", ".join(f"{v} {w}%" for v, w in entry.get("weights", {}).items())
    return (f"{entry['time']}  {entry['service']} {entry['canary']}{step}: {entry['decision']} - "
            f"{entry['reason']} [{weights}]")


def last_run(state_dir: Path, service: str) -> list[dict]:
    """The log entries of the service's latest canary run."""
    path = log_path(state_dir, service)
    if not path.exists():
        return []
    entries = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    starts = [i for i, e in enumerate(entries) if e["decision"] == "start"]
    return entries[starts[-1]:] if starts else entries


# --- the CLI: aimesh canary SERVICE --to V ..., aimesh canary status|abort [SERVICE] -----------

def _canary_services(topo: Topology) -> list[str]:
    return [name for name, s in topo.services.items() if any(i.version for i in s.instances)]


def cmd_canary(args) -> int:
    from services.kit.retention import seconds

    from .mesh import Refused
    topo = topology.load()
    state_dir = paths.state_dir()
    services = _canary_services(topo)
    if args.action in ("status", "abort"):
        names = [args.service] if args.service else services
        for name in names:
            if name not in services:
                raise Refused(f"{name!r} is not a canary service: {', '.join(services)}")
        if args.action == "abort":
            if not args.service:
                raise Refused("name the service: aimesh canary abort SERVICE")
            overrides.change(state_dir, topo, lambda o: o.without_weights(args.service))
            print(f"aimesh: {args.service}'s weights are the topology's again")
            return 0
        for name in names:
            print("\n".join(describe(e) for e in last_run(state_dir, name)) or f"{name}: no canary run yet")
        return 0
    service = args.action
    if service not in services:
        raise Refused(f"{service!r} is not a canary service (versions with weights): {', '.join(services)}")
    versions = [i.version for i in topo.services[service].instances if i.version]
    if args.to not in versions:
        raise Refused(f"--to: {service} has versions {', '.join(versions)}")
    try:
        steps = [int(s) for s in args.steps.split(",")]
        interval_s = seconds(args.interval)
    except ValueError as mistake:
        raise Refused(f"--steps are percents such as 10,25,50,100 and --interval a duration: {mistake}") from None
    if not steps or steps != sorted(steps) or not all(0 < s <= 100 for s in steps):
        raise Refused("--steps rise, each in 1..100, e.g. 10,25,50,100")

    def terminate(*_):
        raise Interrupted
    signal.signal(signal.SIGTERM, terminate)
    rollout = Rollout(topo, state_dir, service, args.to, steps, interval_s, args.min_calls)
    try:
        return rollout.run()
    except RuntimeError as failure:     # the gateway is not running, or its config moved on
        print(f"aimesh: {failure}", file=sys.stderr)
        return 1
