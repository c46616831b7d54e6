"""The running mesh's numbers, read where they are kept: Envoy's admin stats (calls and gRPC
statuses per cluster and method, from its grpc_stats filter), every instance's Prometheus metrics
(latency, fallbacks, breakers) and Triton's (queue and batch sizes). `aimesh canary` judges a
version by them, `aimesh top` shows them."""
from __future__ import annotations

import math
from dataclasses import dataclass

from services.ops import overview
from services.ops.overview import Targets

from .topology import Service, Topology

# Statuses that say the server failed, not the caller: a bad argument, a missing token or a
# spent rate limit is the client's, and never held against a version.
SERVER_FAULTS = overview.SERVER_FAULTS
NOT_THE_VERSIONS_FAULT = {"cold_start"}    # a fallback cause any version would share


def targets(topo: Topology, host=lambda component: "127.0.0.1") -> Targets:
    """Where the overview (`aimesh top`, the ops service) reads: `host(name)` names the host of
    envoy, triton and each instance (loopback here; in containers, by name)."""
    return Targets(
        envoy_admin=f"http://{host('envoy')}:{topo.gateway.admin_port}",
        triton_http=f"http://{host('triton')}:{topo.infra.triton_http_port}",
        triton_metrics=f"http://{host('triton')}:{topo.infra.triton_metrics_port}",
        instances={i.name: f"http://{host(i.name)}:{i.metrics_port}/metrics" for _, i in topo.instances()},
        services={g: s.name for s in topo.services.values() for g in s.grpc_services},
        slos={route: (slo.availability, slo.p99_s) for route, slo in topo.slos.items()})


def envoy_stats(topo: Topology, prefix: str = "") -> dict[str, float]:
    """Envoy's counters and gauges on this machine (name -> value), those starting with `prefix`."""
    return overview.envoy_stats(f"http://127.0.0.1:{topo.gateway.admin_port}", prefix)


@dataclass(frozen=True)
class Counts:
    """One version's calls since its instance started (cumulative); subtract two to get a window."""
    calls: int = 0            # at the gateway, any status
    errors: int = 0           # of them, server faults (SERVER_FAULTS), injected ones included
    fallbacks: int = 0        # answered OK without the model (the instance's own count)
    buckets: tuple[tuple[float, float], ...] = ()   # handling time: (le seconds, calls <= le)

    def __sub__(self, earlier: Counts) -> Counts:
        before = dict(earlier.buckets)
        return Counts(self.calls - earlier.calls, self.errors - earlier.errors,
                      self.fallbacks - earlier.fallbacks,
                      tuple((le, n - before.get(le, 0)) for le, n in self.buckets))

    @property
    def bad(self) -> int:
        return self.errors + self.fallbacks

    @property
    def bad_share(self) -> float:
        return self.bad / self.calls if self.calls else 0.0

    def quantile(self, q: float) -> float | None:
        """The upper bound of the bucket holding the q-th call (None without calls)."""
        total = self.buckets[-1][1] if self.buckets else 0
        if not total:
            return None
        return next(le for le, n in self.buckets if n >= q * total)

    def as_dict(self) -> dict:
        p99 = self.quantile(0.99)
        return {"calls": self.calls, "errors": self.errors, "fallbacks": self.fallbacks,
                "bad_share": round(self.bad_share, 4),
                "p99_ms": None if p99 is None else (math.inf if p99 == math.inf else round(p99 * 1000, 1))}


def _gateway_counts(stats: dict[str, float], cluster: str, service: Service) -> tuple[int, int]:
    calls = errors = 0
    for grpc_service in service.grpc_services:
        prefix = f"cluster.{cluster}.grpc.{grpc_service}."
        for name, value in stats.items():
            if name.startswith(prefix):
                counter = name.rsplit(".", 1)[1]
                calls += int(value) if counter == "total" else 0
                errors += int(value) if counter in SERVER_FAULTS else 0
    return calls, errors


def _instance_counts(port: int, service: Service) -> tuple[int, tuple[tuple[float, float], ...]]:
    try:
        samples = overview.metrics(f"http://127.0.0.1:{port}/metrics")
    except OSError:       # the instance is down: the gateway counts its calls' failures
        return 0, ()
    fallbacks = sum(int(v) for name, labels, v in samples
                    if name == "aimesh_fallbacks_total" and labels["cause"] not in NOT_THE_VERSIONS_FAULT)
    buckets: dict[float, float] = {}
    for name, labels, value in samples:
        if name == "aimesh_grpc_server_handling_seconds_bucket" and any(
                labels["method"].startswith(f"/{g}/") for g in service.grpc_services):
            le = float(labels["le"])
            buckets[le] = buckets.get(le, 0) + value
    return fallbacks, tuple(sorted(buckets.items()))


def version_counts(topo: Topology, service_name: str) -> dict[str, Counts]:
    """Each version of a canary service: the gateway's count of its calls and server faults, and
    its instances' fallbacks and handling times."""
    from .envoy.common import version_cluster
    service = topo.services[service_name]
    stats = envoy_stats(topo, f"cluster.{service.name}-")
    counts = {}
    for version in dict.fromkeys(i.version for i in service.instances if i.version):
        calls, errors = _gateway_counts(stats, version_cluster(service, version), service)
        fallbacks, buckets = 0, dict[float, float]()
        for instance in (i for i in service.instances if i.version == version):
            more, histogram = _instance_counts(instance.metrics_port, service)
            fallbacks += more
            for le, n in histogram:
                buckets[le] = buckets.get(le, 0) + n
        counts[version] = Counts(calls, errors, fallbacks, tuple(sorted(buckets.items())))
    return counts


__all__ = ["Counts", "envoy_stats", "targets", "version_counts"]
