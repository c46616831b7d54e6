"""The mesh at a glance, read where the numbers are kept: the gateway's admin (calls and gRPC
statuses per cluster and method from its grpc_stats filter, canary weights and injected faults
from its live route config, outlier ejections), every instance's Prometheus metrics (handling
time, fallbacks, circuit breakers) and Triton's (requests, batches, queue; versions loaded).

`Watch.read()` takes one reading; rates and latencies are over the window since the oldest
reading kept (about WINDOW_S), so a live view shows the last seconds, not the uptime."""
from __future__ import annotations

import collections
import json
import re
import time
import urllib.request
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

TIMEOUT_S = 2
WINDOW_S = 5.0
SERVER_FAULTS = {"2", "4", "12", "13", "14", "15"}   # gRPC codes that are the server's failure
FAULT_FILTER = "envoy.filters.http.fault"
BREAKER_STATES = {0: "closed", 1: "open", 2: "half-open"}


@dataclass(frozen=True)
class Targets:
    """Where to read (built by the runner from the topology; plain values, no topology here)."""
    envoy_admin: str                          # http://host:port
    triton_http: str
    triton_metrics: str
    instances: dict[str, str]                 # instance name -> its metrics URL
    services: dict[str, str]                  # gRPC service full name -> topology service name
    slos: dict[str, tuple[float, float]]      # route (service.Method) -> (availability, p99 s)

    def to_json(self) -> str:
        return json.dumps(self.__dict__)

    @classmethod
    def from_json(cls, text: str) -> Targets:
        raw = json.loads(text)
        return cls(**{**raw, "slos": {k: tuple(v) for k, v in raw["slos"].items()}})


@dataclass(frozen=True)
class Route:
    route: str                   # service.Method
    rps: float
    p50_ms: float | None         # the instances' handling time (a stream: the whole stream)
    p99_ms: float | None
    error_share: float           # server faults at the gateway
    fallback_share: float        # answered without the model
    slo_availability: float | None
    slo_p99_ms: float | None

    @property
    def meets_slo(self) -> bool | None:
        if self.slo_availability is None or not self.rps:
            return None
        bad = self.error_share + self.fallback_share
        return bad <= 1 - self.slo_availability and (
            self.p99_ms is None or self.slo_p99_ms is None or self.p99_ms <= self.slo_p99_ms)


@dataclass(frozen=True)
class Model:
    model: str
    versions: tuple[str, ...]    # loaded now
    rps: float
    avg_batch: float | None      # inferences per execution
    avg_queue_ms: float | None
    pending: int


@dataclass(frozen=True)
class Overview:
    at: float
    window_s: float
    routes: list[Route]
    weights: dict[str, dict[str, int]]        # canary service -> cluster -> weight (live)
    faults: list[str]                         # injected faults, one line per service and listener
    breakers: list[tuple[str, str, str]]      # (where, what, state)
    models: list[Model]
    unreachable: list[str] = field(default_factory=list)


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
        return response.read().decode()


def _samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    return [(s.name, s.labels, s.value) for family in text_string_to_metric_families(text)
            for s in family.samples]


def metrics(url: str) -> list[tuple[str, dict[str, str], float]]:
    """A Prometheus endpoint's samples: (name, labels, value); counters carry their _total."""
    return _samples(_get(url))


def envoy_stats(admin: str, prefix: str = "") -> dict[str, float]:
    """Envoy's counters and gauges (name -> value), those starting with `prefix` if given."""
    text = _get(f"{admin}/stats" + (f"?filter=^{prefix.replace('.', '[.]')}" if prefix else ""))
    stats = {}
    for line in text.splitlines():
        name, _, value = line.partition(": ")
        try:
            stats[name] = float(value)
        except ValueError:    # a histogram's summary line
            continue
    return stats


@dataclass
class Reading:
    at: float
    envoy: dict[str, float]
    instances: dict[str, list[tuple[str, dict[str, str], float]]]
    triton: list[tuple[str, dict[str, str], float]]


class Watch:
    def __init__(self, targets: Targets):
        self.targets = targets
        self.history: collections.deque[Reading] = collections.deque()

    def read(self) -> Overview:
        unreachable: list[str] = []
        now = self._reading(unreachable)
        self.history.append(now)
        while len(self.history) > 2 and now.at - self.history[1].at >= WINDOW_S:
            self.history.popleft()
        before = self.history[0] if len(self.history) > 1 else None
        routes_json = self._routes_config(unreachable)
        return Overview(
            at=time.time(), window_s=now.at - before.at if before else 0.0,
            routes=self._routes(now, before), weights=_weights(routes_json),
            faults=_faults(routes_json), breakers=self._breakers(now), models=self._models(now, before),
            unreachable=unreachable)

    def _reading(self, unreachable: list[str]) -> Reading:
        envoy: dict[str, float] = {}
        try:
            envoy = envoy_stats(self.targets.envoy_admin, "cluster.")
        except OSError:
            unreachable.append("gateway admin")
        instances = {}
        for name, url in self.targets.instances.items():
            try:
                instances[name] = metrics(url)
            except OSError:
                unreachable.append(name)
        try:
            triton = metrics(f"{self.targets.triton_metrics}/metrics")
        except OSError:
            triton = []
            unreachable.append("triton")
        return Reading(time.monotonic(), envoy, instances, triton)

    def _routes_config(self, unreachable: list[str]) -> dict:
        try:
            dump = json.loads(_get(f"{self.targets.envoy_admin}/config_dump?resource=dynamic_route_configs"))
        except OSError:
            return {}
        return {c["route_config"]["name"]: c["route_config"] for c in dump.get("configs", [])}

    def _routes(self, now: Reading, before: Reading | None) -> list[Route]:
        services = self.targets.services
        calls, errors = _gateway_calls(now.envoy, services), _gateway_calls(now.envoy, services, True)
        if before:
            calls = _minus(calls, _gateway_calls(before.envoy, services))
            errors = _minus(errors, _gateway_calls(before.envoy, services, True))
        fallbacks = _instance_sum(now, "aimesh_fallbacks_total", "route")
        buckets = self._buckets(now)
        if before:
            fallbacks = _minus(fallbacks, _instance_sum(before, "aimesh_fallbacks_total", "route"))
            earlier = self._buckets(before)
            buckets = {r: {le: n - earlier.get(r, {}).get(le, 0) for le, n in b.items()} for r, b in buckets.items()}
        window = (now.at - before.at) if before else 0.0
        names = sorted(set(self.targets.slos) | {r for r, n in calls.items() if n})
        routes = []
        for name in names:
            n = calls.get(name, 0)
            slo = self.targets.slos.get(name)
            routes.append(Route(
                route=name, rps=n / window if window else 0.0,
                p50_ms=_quantile(buckets.get(name, {}), 0.5), p99_ms=_quantile(buckets.get(name, {}), 0.99),
                error_share=errors.get(name, 0) / n if n else 0.0,
                fallback_share=min(1.0, fallbacks.get(name, 0) / n) if n else 0.0,
                slo_availability=slo[0] if slo else None, slo_p99_ms=slo[1] * 1000 if slo else None))
        return routes

    def _buckets(self, reading: Reading) -> dict[str, dict[float, float]]:
        """route -> le -> calls, the instances' handling-time histograms added up."""
        found: dict[str, dict[float, float]] = {}
        for samples in reading.instances.values():
            for name, labels, value in samples:
                if name != "aimesh_grpc_server_handling_seconds_bucket":
                    continue
                grpc_service, _, method = labels["method"].strip("/").partition("/")
                service = self.targets.services.get(grpc_service)
                if service:
                    per_le = found.setdefault(f"{service}.{method}", {})
                    per_le[float(labels["le"])] = per_le.get(float(labels["le"]), 0) + value
        return found

    def _breakers(self, now: Reading) -> list[tuple[str, str, str]]:
        found = [(instance, labels["breaker"], BREAKER_STATES.get(int(value), str(value)))
                 for instance, samples in sorted(now.instances.items())
                 for name, labels, value in samples if name == "aimesh_breaker_state"]
        for stat, value in sorted(now.envoy.items()):
            if stat.endswith(".outlier_detection.ejections_active") and value:
                found.append(("gateway", stat.split(".")[1], f"{int(value)} host(s) ejected"))
            if stat.endswith(".circuit_breakers.default.rq_open") and value:
                found.append(("gateway", stat.split(".")[1], "requests breaker open"))
        return found

    def _models(self, now: Reading, before: Reading | None) -> list[Model]:
        def per_model(reading: Reading, metric: str) -> dict[str, float]:
            totals: dict[str, float] = {}
            for name, labels, value in reading.triton:
                if name == metric:
                    totals[labels["model"]] = totals.get(labels["model"], 0) + value
            return totals
        # The parser names counters with their _total, as OpenMetrics does.
        current = {m: per_model(now, m) for m in (
            "nv_inference_request_success_total", "nv_inference_count_total", "nv_inference_exec_count_total",
            "nv_inference_queue_duration_us_total", "nv_inference_pending_request_count")}
        delta = {m: _minus(v, per_model(before, m)) if before else {} for m, v in current.items()}
        window = (now.at - before.at) if before else 0.0
        models = []
        for model in sorted(current["nv_inference_request_success_total"]):
            requests = delta["nv_inference_request_success_total"].get(model, 0)
            executions = delta["nv_inference_exec_count_total"].get(model, 0)
            try:
                versions = tuple(json.loads(_get(f"{self.targets.triton_http}/v2/models/{model}"))["versions"])
            except (OSError, KeyError, ValueError):
                versions = ()
            models.append(Model(
                model=model, versions=versions, rps=requests / window if window else 0.0,
                avg_batch=delta["nv_inference_count_total"].get(model, 0) / executions if executions else None,
                avg_queue_ms=delta["nv_inference_queue_duration_us_total"].get(model, 0) / requests / 1000
                if requests else None,
                pending=int(current["nv_inference_pending_request_count"].get(model, 0))))
        return models


def _gateway_calls(envoy: dict[str, float], services: dict[str, str],
                   errors_only: bool = False) -> dict[str, float]:
    """route (service.Method) -> calls, or server faults, over every cluster: grpc_stats names
    them cluster.<cluster>.grpc.<package.Service>.<Method>.<total|status code>."""
    found: dict[str, float] = {}
    for stat, value in envoy.items():
        _, grpc, rest = stat.partition(".grpc.")
        if not grpc:
            continue
        path, _, counter = rest.rpartition(".")
        if counter not in (SERVER_FAULTS if errors_only else {"total"}):
            continue
        grpc_service, _, method = path.rpartition(".")
        if grpc_service in services:
            route = f"{services[grpc_service]}.{method}"
            found[route] = found.get(route, 0) + value
    return found


def _minus(now: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: v - before.get(k, 0) for k, v in now.items()}


def _instance_sum(reading: Reading, metric: str, label: str) -> dict[str, float]:
    totals: dict[str, float] = {}
    for samples in reading.instances.values():
        for name, labels, value in samples:
            if name == metric:
                totals[labels[label]] = totals.get(labels[label], 0) + value
    return totals


def _quantile(buckets: dict[float, float], q: float) -> float | None:
    ordered = sorted(buckets.items())
    total = ordered[-1][1] if ordered else 0
    if total <= 0:
        return None
    le = next(le for le, n in ordered if n >= q * total)
    return le * 1000


def _weights(routes: dict) -> dict[str, dict[str, int]]:
    """Canary splits as the gateway runs them: the edge's weighted routes, one per service."""
    found: dict[str, dict[str, int]] = {}
    for route in _routes_of(routes.get("edge", {})):
        split = route.get("route", {}).get("weighted_clusters")
        if split:
            clusters = {c["name"]: int(c.get("weight", 0)) for c in split["clusters"]}
            found.setdefault(route["name"].split("-")[0], clusters)
    return found


def _faults(routes: dict) -> list[str]:
    """One line per service and listener with an injected fault."""
    lines: dict[str, None] = {}
    for listener, config in sorted(routes.items()):
        for route in _routes_of(config):
            fault = route.get("typed_per_filter_config", {}).get(FAULT_FILTER)
            if fault:
                lines[f"{route['name'].split('-')[0]} ({listener}): {_describe(fault)}"] = None
    return list(lines)


def _describe(fault: dict) -> str:
    def percent(part: dict) -> str:
        share = part.get("percentage", {})
        scale = {"HUNDRED": 100, "TEN_THOUSAND": 10_000, "MILLION": 1_000_000}[share.get("denominator", "HUNDRED")]
        return f"{share.get('numerator', 0) * 100 / scale:g}%"
    parts = []
    if "delay" in fault:
        delay_s = float(fault["delay"]["fixed_delay"].rstrip("s"))    # Envoy writes "0.010s"
        parts.append(f"delay {delay_s:g}s on {percent(fault['delay'])}")
    if "abort" in fault:
        parts.append(f"abort grpc-status {fault['abort']['grpc_status']} on {percent(fault['abort'])}")
    if fault.get("upstream_cluster"):
        parts.append(f"to {fault['upstream_cluster']}")
    for header in fault.get("headers", ()):
        match = header.get("string_match", {})
        if "exact" in match:
            parts.append(f"when {header['name']}: {match['exact']}")
        elif caller := re.search(r"/([\w-]+)\(", match.get("safe_regex", {}).get("regex", "")):
            parts.append(f"from {caller[1]}")      # the caller's SPIFFE id in the client certificate
    return ", ".join(parts)


def _routes_of(config: dict) -> list[dict]:
    return [r for host in config.get("virtual_hosts", ()) for r in host.get("routes", ())]
