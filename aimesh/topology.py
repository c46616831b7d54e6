"""The mesh's one description, loaded from topology.yaml into typed, read-only objects."""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

if TYPE_CHECKING:   # imported in load(): the kit's package imports the generated stubs, which a
    from services.kit.retention import Retention  # fresh clone makes only after importing this

DEFAULT_FILE = Path(__file__).with_name("topology.yaml")
EXTENDS = "extends"          # a topology file may name another and override parts of it
METRICS_PORT_SHIFT = 1000   # an instance's Prometheus /metrics is on its gRPC port + this
PROBE_PORT_SHIFT = 2000     # its plaintext grpc.health.v1-only port (probes without TLS): + this
TRITON = "triton"           # in identity.calls: Triton's inference API through the mesh


@dataclass(frozen=True)
class Instance:
    name: str
    port: int
    version: str = ""
    weight: int = 0

    @property
    def metrics_port(self) -> int:
        return self.port + METRICS_PORT_SHIFT

    @property
    def probe_port(self) -> int:
        return self.port + PROBE_PORT_SHIFT


@dataclass(frozen=True)
class RateLimit:
    """Calls per minute for each user, by the token's tier."""
    free: int
    pro: int


@dataclass(frozen=True)
class Service:
    name: str
    grpc_services: tuple[str, ...]
    instances: tuple[Instance, ...]
    timeout_s: float
    public: tuple[str, ...] = ()
    streams: tuple[str, ...] = ()
    client_streams: tuple[str, ...] = ()  # of those, where the client sends a stream
    idempotent: tuple[str, ...] = ()      # unary methods safe to retry ("*": all of them)
    rate_limit: RateLimit | None = None   # per user and tier, at the edge
    jwks_port: int = 0
    generations_per_user: int = 0         # chat: a user's answers generating at once (0: no cap)
    temperature: float = 0.7              # chat: sampling temperature of answers
    full_length: bool = False             # chat: answers run to max_tokens (benchmarks of decoding)
    publishes: tuple[str, ...] = ()       # NATS subjects only this service publishes
    consumes: tuple[str, ...] = ()        # JetStream streams it reads with durable consumers
    saga: dict[str, str] = field(default_factory=dict)   # content: step_timeout, retries, deadline, lease

    @property
    def module(self) -> str:
        return f"services.{self.name}"


@dataclass(frozen=True)
class Resilience:
    """Retries, circuit breaking, outlier detection and health checks, for every cluster."""
    retries: int
    retry_budget_percent: float
    max_connections: int
    max_pending_requests: int
    max_requests: int
    consecutive_gateway_failures: int
    ejection_s: float
    health_interval_s: float
    health_timeout_s: float
    unhealthy_threshold: int


@dataclass(frozen=True)
class Gateway:
    edge_port: int
    mesh_port: int
    admin_port: int
    audience: str
    issuer: str
    stream_idle_timeout_s: float
    web_origin: str                       # the page allowed to call through grpc-web (CORS)
    public_rate_limit_per_minute: int     # public methods (Login, Register), per client address
    resilience: Resilience
    jwks_cache_s: float                   # how long Envoy caches user-svc's JWKS (key rotation waits it)
    max_client_connections: int           # downstream connections Envoy holds at once, both listeners



@dataclass(frozen=True)
class Identity:
    """Workload identity: mTLS on every hop, and who may call what east-west."""
    mtls: bool
    certificate_lifetime_s: float
    calls: dict[str, tuple[str, ...]]     # caller workload -> "svc", "svc.Method" or "triton"
    on_behalf: dict[str, tuple[str, ...]] = field(default_factory=dict)   # workload -> "svc.Method" it calls as itself

    def agents(self, service: str) -> dict[str, list[str]]:
        """method of `service` -> the workloads that may call it on a user's behalf, tokenless."""
        named: dict[str, list[str]] = {}
        for workload, methods in self.on_behalf.items():
            for entry in methods:
                if entry.startswith(f"{service}."):
                    named.setdefault(entry.split(".", 1)[1], []).append(workload)
        return named

    def callers_of(self, service: str, method: str | None = None) -> list[str]:
        """The workloads allowed to call `service` (any method when `method` is None: those
        allowed the whole service)."""
        wanted = {service} if method is None else {service, f"{service}.{method}"}
        return [caller for caller, allowed in self.calls.items() if wanted & set(allowed)]

    def methods_allowed(self, service: str) -> dict[str, list[str]]:
        """method -> callers, for the methods of `service` allowed one by one."""
        named: dict[str, list[str]] = {}
        for caller, allowed in self.calls.items():
            for entry in allowed:
                if entry.startswith(f"{service}."):
                    named.setdefault(entry.split(".", 1)[1], []).append(caller)
        return named


@dataclass(frozen=True)
class Slo:
    """What one route promises: of its calls, the share `availability` is answered OK and not
    from a fallback, and 99% within `p99_s` (the whole call; a stream's first message), while the
    route gets up to `load_rps` calls a second in the load test's mix."""
    route: str               # service.Method
    availability: float      # 0.999 for "99.9%"
    p99_s: float
    load_rps: float


@dataclass(frozen=True)
class Fault:
    """A fault injected at run time (`aimesh fault`, kept in the state dir's overrides): Envoy
    delays and/or aborts `percent` of the calls on every route of `target` (a service, or
    triton), optionally only on one listener, from one caller workload (east-west), to one
    version's instances (a canary service) or for one model (triton)."""
    target: str
    delay_s: float = 0.0
    abort: str = ""           # a gRPC status name (UNAVAILABLE, ...); "" delays only
    percent: float = 100.0
    listener: str = ""        # "edge", "mesh", or "" for both
    caller: str = ""          # a workload (identity.calls' names): east-west calls from it only
    version: str = ""         # a canary service's version: calls bound for its instances only
    model: str = ""           # triton: calls for this model only

    def describe(self) -> str:
        what = [f"delay {self.delay_s:g}s" if self.delay_s else "", f"abort {self.abort}" if self.abort else ""]
        scope = [f"{name} {value}" for name, value in (("listener", self.listener), ("caller", self.caller),
                 ("version", self.version), ("model", self.model)) if value]
        return f"{self.target}: {' + '.join(w for w in what if w)} on {self.percent:g}% of calls" + (
            f" ({', '.join(scope)})" if scope else "")


@dataclass(frozen=True)
class Infra:
    postgres_port: int
    nats_port: int
    nats_monitor_port: int
    triton_http_port: int
    triton_grpc_port: int
    triton_metrics_port: int
    prometheus_port: int
    phoenix_port: int
    phoenix_grpc_port: int
    phoenix_json_port: int      # OTLP/HTTP as JSON (Triton's exporter), handed on to Phoenix


@dataclass(frozen=True)
class Observability:
    """Prometheus on this machine: how often it scrapes and evaluates, how long an alert's
    condition must hold, how much disk its data may take."""
    scrape_interval_s: float = 15.0
    evaluation_interval_s: float = 15.0
    alert_for_s: float = 60.0
    retention_bytes: int = 256 << 20
    trace_sampling: float = 1.0       # share of requests traced (decided at the edge)
    triton_spans: bool = False        # Triton's own spans (aimesh.traces.triton_level)
    trace_retention_s: float = 7 * 86400
    trace_storage_bytes: int = 1 << 30


@dataclass(frozen=True)
class Topology:
    gateway: Gateway
    infra: Infra
    services: dict[str, Service]
    retention: Retention
    identity: Identity
    slos: dict[str, Slo]        # by route (service.Method)
    faults: tuple[Fault, ...] = ()   # injected at run time (aimesh/overrides.py), never in the file
    observability: Observability = Observability()

    def workloads(self) -> list[str]:
        """Every name that gets a certificate: the gateway, each service, NATS, the operator."""
        from services.kit.tls import GATEWAY
        return [GATEWAY, *self.services, "nats", "operator"]

    def instances(self):
        """Every (service, instance) pair, in start order."""
        for service in self.services.values():
            for instance in service.instances:
                yield service, instance

    def ports(self) -> dict[str, int]:
        """Every port the mesh listens on, by owner: used to refuse a busy port up front."""
        g, i = self.gateway, self.infra
        ports = {
            "envoy edge": g.edge_port, "envoy east-west": g.mesh_port, "envoy admin": g.admin_port,
            "postgres": i.postgres_port, "nats": i.nats_port, "nats monitor": i.nats_monitor_port,
            "triton http": i.triton_http_port, "triton grpc": i.triton_grpc_port,
            "triton metrics": i.triton_metrics_port, "prometheus": i.prometheus_port,
            "phoenix": i.phoenix_port, "phoenix otlp": i.phoenix_grpc_port,
            "phoenix otlp json": i.phoenix_json_port,
        }
        for service, instance in self.instances():
            ports[instance.name] = instance.port
            ports[f"{instance.name} metrics"] = instance.metrics_port
            ports[f"{instance.name} probe"] = instance.probe_port
            if service.jwks_port:
                ports[f"{service.name} jwks"] = service.jwks_port
        return ports


@dataclass(frozen=True)
class Method:
    name: str
    streaming: bool          # either side streams
    idempotent: bool         # idempotency_level NO_SIDE_EFFECTS or IDEMPOTENT: safe to retry
    client_streaming: bool = False   # the client sends a stream (else exactly one message)


@functools.cache
def contract_methods(descriptor_set: Path | None = None) -> dict[str, dict[str, Method]]:
    """gRPC service full name -> method name -> what the contract says about it, read from the
    descriptor set `bin/aimesh gen` builds (the CLI generates it before anything loads this)."""
    from google.protobuf import descriptor_pb2

    from aimesh.paths import DESCRIPTOR_SET
    path = descriptor_set or DESCRIPTOR_SET
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run `bin/aimesh gen`")
    files = descriptor_pb2.FileDescriptorSet.FromString(path.read_bytes()).file
    safe = (descriptor_pb2.MethodOptions.NO_SIDE_EFFECTS, descriptor_pb2.MethodOptions.IDEMPOTENT)
    return {f"{file.package}.{service.name}": {
        method.name: Method(method.name, method.client_streaming or method.server_streaming,
                            method.options.idempotency_level in safe, method.client_streaming)
        for method in service.method} for file in files for service in file.service}


def default_file() -> Path:
    """AIMESH_TOPOLOGY picks another file (tests use one with their own rate limits)."""
    return Path(os.environ.get("AIMESH_TOPOLOGY") or DEFAULT_FILE)


def read(path: Path) -> dict:
    """The file's content; with `extends: <file>` it is that file's content (relative to this
    one) with this file's mappings merged over it, so an override names only what differs."""
    raw = yaml.safe_load(Path(path).read_text())
    if EXTENDS not in raw:
        return raw
    return _merged(read(Path(path).parent / raw.pop(EXTENDS)), raw)


def _merged(base: dict, override: dict) -> dict:
    merged = dict(base)
    for key, value in override.items():
        both_maps = isinstance(value, dict) and isinstance(base.get(key), dict)
        merged[key] = _merged(base[key], value) if both_maps else value
    return merged


def _shifter(port_offset: int | None):
    """Every port is shifted by AIMESH_PORT_OFFSET (tests run beside a dev mesh)."""
    if port_offset is None:
        port_offset = int(os.environ.get("AIMESH_PORT_OFFSET", "0"))
    return lambda value: int(value) + port_offset


def load_infra(path: Path | None = None, port_offset: int | None = None) -> Infra:
    """The infrastructure's ports alone, read without the contracts or the kit: for what starts
    only those, where neither is at hand (bench/gpu_throughput.py on a bare GPU machine)."""
    return _infra(read(path or default_file())["infra"], _shifter(port_offset))


def _infra(infra: dict, port) -> Infra:
    return Infra(
        postgres_port=port(infra["postgres"]["port"]),
        nats_port=port(infra["nats"]["port"]),
        nats_monitor_port=port(infra["nats"]["monitor_port"]),
        triton_http_port=port(infra["triton"]["http_port"]),
        triton_grpc_port=port(infra["triton"]["grpc_port"]),
        triton_metrics_port=port(infra["triton"]["metrics_port"]),
        prometheus_port=port(infra["prometheus"]["port"]),
        phoenix_port=port(infra["phoenix"]["port"]), phoenix_grpc_port=port(infra["phoenix"]["grpc_port"]),
        phoenix_json_port=port(infra["phoenix"]["json_port"]),
    )


def load(path: Path | None = None, port_offset: int | None = None) -> Topology:
    """Read the topology; every port is shifted by AIMESH_PORT_OFFSET (tests run beside a dev mesh)."""
    raw = read(path or default_file())
    port = _shifter(port_offset)
    g = raw["gateway"]
    gateway = Gateway(
        edge_port=port(g["edge_port"]), mesh_port=port(g["mesh_port"]),
        admin_port=port(g["admin_port"]), audience=g["audience"], issuer=g["issuer"],
        stream_idle_timeout_s=float(g["stream_idle_timeout_s"]), web_origin=g["web_origin"],
        public_rate_limit_per_minute=int(g["public_rate_limit_per_minute"]),
        resilience=Resilience(**g["resilience"]), jwks_cache_s=float(g["jwks_cache_s"]),
        max_client_connections=int(g["max_client_connections"]),
    )
    infra = _infra(raw["infra"], port)
    services = {}
    methods = contract_methods()
    for name, s in raw["services"].items():
        described = [m for g in s["grpc_services"] for m in methods.get(g, {}).values()]
        instances = tuple(
            Instance(name=i["name"], port=port(i["port"]), version=i.get("version", ""),
                     weight=int(i.get("weight", 0)))
            for i in s["instances"]
        )
        services[name] = Service(
            name=name, grpc_services=tuple(s["grpc_services"]), instances=instances,
            timeout_s=float(s["timeout_s"]), public=tuple(s.get("public", ())),
            # From the contracts: streaming, and `option idempotency_level` (either level may be
            # retried); the topology may add "*" for a service without contracts (the catalog).
            # A service without contracts of ours (the catalog's reflection) names its client streams.
            streams=(*(m.name for m in described if m.streaming), *s.get("client_streams", ())),
            client_streams=(*(m.name for m in described if m.client_streaming), *s.get("client_streams", ())),
            idempotent=(*(m.name for m in described if m.idempotent), *s.get("idempotent", ())),
            rate_limit=RateLimit(**s["rate_limit_per_minute"]) if "rate_limit_per_minute" in s else None,
            jwks_port=port(s["jwks_port"]) if s.get("jwks_port") else 0,
            generations_per_user=int(s.get("generations_per_user", 0)),
            temperature=float(s.get("temperature", 0.7)),
            full_length=bool(s.get("full_length", False)),
            publishes=tuple(s.get("events", {}).get("publishes", ())),
            consumes=tuple(s.get("events", {}).get("consumes", ())),
            saga={k: str(v) for k, v in (s.get("saga") or {}).items()},
        )
    from services.kit.retention import Retention, seconds, size
    seen = raw.get("observability") or {}
    observability = Observability(
        scrape_interval_s=seconds(seen.get("scrape_interval", "15s")),
        evaluation_interval_s=seconds(seen.get("evaluation_interval", "15s")),
        alert_for_s=seconds(seen.get("alert_for", "1m")), retention_bytes=size(seen.get("retention", "256MiB")),
        trace_sampling=_sampling(seen.get("trace_sampling", "100%")),
        triton_spans=bool(seen.get("triton_spans", False)),
        trace_retention_s=seconds(seen.get("trace_retention", "7d")),
        trace_storage_bytes=size(seen.get("trace_storage", "1GiB")))
    return Topology(gateway=gateway, infra=infra, services=services, observability=observability,
                    retention=Retention.parse(raw.get("retention") or {}),
                    identity=_identity(raw.get("identity") or {}, services, seconds),
                    slos=_slos(raw.get("slos") or {}, services, methods, seconds))


def _slos(raw: dict, services: dict[str, Service], methods: dict[str, dict[str, Method]],
          seconds) -> dict[str, Slo]:
    slos = {}
    for route, promise in raw.items():
        where = f"slos.{route}"
        service, _, method = route.partition(".")
        if service not in services:
            raise ValueError(f"{where}: no service {service!r}")
        if not any(method in methods.get(g, {}) for g in services[service].grpc_services):
            raise ValueError(f"{where}: {service}'s contracts have no method {method!r}")
        unknown = set(promise) - {"availability", "p99", "at"}
        if unknown or len(promise) != 3:
            raise ValueError(f"{where}: give availability, p99 and at (and nothing else)")
        availability = _percent(promise["availability"], f"{where}.availability")
        p99_s = seconds(promise["p99"])
        load = str(promise["at"])
        if not load.endswith("/s") or float(load[:-2]) <= 0 or p99_s <= 0:
            raise ValueError(f"{where}: p99 is a duration and at a rate such as 20/s, not {promise}")
        slos[route] = Slo(route, availability, p99_s, float(load[:-2]))
    return slos


def _sampling(value: str) -> float:
    text = str(value).strip()
    share = float(text.rstrip("%")) / 100
    if not text.endswith("%") or not 0 <= share <= 1:
        raise ValueError(f"observability.trace_sampling: a percentage from 0% to 100%, not {value!r}")
    return share


def _percent(value: str | float, where: str) -> float:
    text = str(value).strip()
    share = float(text.rstrip("%")) / 100
    if not text.endswith("%") or not 0 < share <= 1:
        raise ValueError(f"{where}: a percentage such as 99.9%, not {value!r}")
    return share


def _identity(raw: dict, services: dict[str, Service], seconds) -> Identity:
    calls = {caller: tuple(allowed) for caller, allowed in (raw.get("calls") or {}).items()}
    known = {*services, TRITON}
    for caller, allowed in calls.items():
        for entry in allowed:
            service, _, method = entry.partition(".")
            if service not in known:
                raise ValueError(f"identity.calls.{caller}: no service {service!r}")
    on_behalf = {workload: tuple(methods) for workload, methods in (raw.get("on_behalf") or {}).items()}
    for workload, methods in on_behalf.items():
        for entry in methods:
            service = entry.partition(".")[0]
            if entry not in calls.get(workload, ()) and service not in calls.get(workload, ()):
                raise ValueError(f"identity.on_behalf.{workload}: {entry} is not in its identity.calls")
    return Identity(mtls=bool(raw.get("mtls", True)),
                    certificate_lifetime_s=seconds(raw.get("certificate_lifetime", "12h")),
                    calls=calls, on_behalf=on_behalf)
