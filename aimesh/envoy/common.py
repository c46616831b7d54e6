"""Names and small helpers every part of the Envoy config shares."""
from __future__ import annotations

from dataclasses import dataclass, field

from aimesh.topology import Service, Topology
from services.kit.config import Config
from services.kit.identity import PIN_HEADER

LOOPBACK = "127.0.0.1"


JWT_PROVIDER = "user"                      # user-svc issues every token


JWKS_CLUSTER = "jwks"


DESCRIPTOR_SET = "gen/aimesh.binpb"        # for JSON transcoding; relative to the repository


WEB_DIR = "web/dist"                       # the built page (`aimesh web`); relative to the repository


# The page's files, served by the edge itself (one front door, one origin): path -> (file, type).
WEB_FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/web/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/web/app.css": ("app.css", "text/css; charset=utf-8"),
}


MAX_WEB_FILE_BYTES = 4 * 1024 * 1024       # Envoy's default cap on a direct response is 4 KiB


# Triton is routed like a service of the topology: its streams have no route timeout, and
# inference has no side effects, so every call may be retried.
TRITON = Service(name="triton", grpc_services=("inference.GRPCInferenceService",), instances=(),
                 timeout_s=10,             # callers set tighter deadlines; this only bounds a hang
                 streams=("ModelStreamInfer",), client_streams=("ModelStreamInfer",), idempotent=("*",))


OTLP_CLUSTER = "otlp"                      # where spans go, when an OTLP endpoint is configured


OWN_CERTIFICATE = "gateway"                # SDS secret names


TRUST = "trust"


RBAC_FILTER = "envoy.filters.http.rbac"


# CEL: the connection failed in TLS (no certificate, an unknown CA, expired); the listener's log
# would otherwise have a line for every connection.
HANDSHAKE_FAILED = "connection.transport_failure_reason != ''"


# Retry only what never produced an answer: a refused connection, a reset, or UNAVAILABLE.
# RESOURCE_EXHAUSTED (a rate limit) is deliberately absent.
RETRY_ON = "unavailable,reset,connect-failure"


RATE_LIMIT_FILTER = "envoy.filters.http.local_ratelimit"


CORS_FILTER = "envoy.filters.http.cors"


FAULT_FILTER = "envoy.filters.http.fault"   # inert on the listener; `aimesh fault` sets it per route


GRPC_STATS_FILTER = "envoy.filters.http.grpc_stats"


# A request of one message (unary and server-streaming calls) is read whole by the gateway (on
# both listeners) and refused past the services' own limit plus its frame, before it reaches a
# service; a client's stream passes as it comes (each of its messages bounded by the service).
BUFFER_FILTER = "envoy.filters.http.buffer"

# HTTP/2 flow control windows on both sides of the gateway (Envoy's defaults are 256 MiB a
# stream): a client that stops reading a stream holds at most these, and the service's writes
# wait, as Envoy's edge guidance has it.
HTTP2_WINDOWS = {"initial_stream_window_size": 65536, "initial_connection_window_size": 1048576}
MAX_REQUEST_BYTES = Config.max_message_bytes + 5


# The edge checks a call's framing before a service sees it (grpc_check.lua); each method route
# names its check, "one_message" or "client_stream"; other routes (the page's files) get none.
LUA_FILTER = "envoy.filters.http.lua"


MAX_USERS_TRACKED = 10000                  # per-user buckets kept per route (least recently used go)


RATE_LIMITED_MESSAGE = "local_rate_limited"   # Envoy's grpc-message for a limited call


RESOURCE_EXHAUSTED = "8"                        # gRPC status codes, as grpc-status headers
INVALID_ARGUMENT = "3"
DEADLINE_EXCEEDED = "4"


GRPC_WEB_HEADERS = f"authorization,content-type,x-grpc-web,x-user-agent,grpc-timeout,{PIN_HEADER}"


def version_pins(service: Service) -> list[tuple[str, str]]:
    """(version, cluster) for each version of a canary service; none for a plain service."""
    return [(i.version, version_cluster(service, i.version)) for i in service.instances if i.version]


def route_target(service: Service) -> dict:
    """A canary service splits by the topology's weights; a plain one is a single cluster."""
    if not version_pins(service):
        return {"cluster": cluster_name(service)}
    split = [{"name": version_cluster(service, i.version), "weight": i.weight}
             for i in service.instances if i.version]
    return {"weighted_clusters": {"clusters": split}}


def cluster_name(service: Service) -> str:
    return service.name


def version_cluster(service: Service, version: str) -> str:
    return f"{service.name}-{version}"


def issuer_service(topo: Topology) -> Service:
    """The one service that serves the JWKS (user-svc)."""
    issuers = [s for s in topo.services.values() if s.jwks_port]
    if len(issuers) != 1:
        raise ValueError(f"exactly one service must have a jwks_port, found {len(issuers)}")
    return issuers[0]


def socket_address(port: int, host: str = LOOPBACK) -> dict:
    return {"socket_address": {"address": host, "port_value": port}}


@dataclass(frozen=True)
class Addressing:
    """Where Envoy listens and how it reaches each upstream port. Locally: loopback, static.
    In containers: every interface, and each port by the (host, port) a container sees, resolved
    by DNS (a headless Kubernetes Service gives every pod, each health-checked and balanced)."""
    listen: str = LOOPBACK
    names: dict[int, tuple[str, int]] = field(default_factory=dict)

    @property
    def by_name(self) -> bool:
        return bool(self.names)

    def upstream(self, port: int) -> tuple[str, int]:
        return self.names[port] if self.by_name else (LOOPBACK, port)

    def upstreams(self, ports: list[int]) -> list[tuple[str, int]]:
        """Distinct hosts: a service's instances may be one name (replicas behind it)."""
        return list(dict.fromkeys(self.upstream(port) for port in ports))


def seconds(value: float) -> str:
    return f"{value:g}s"
