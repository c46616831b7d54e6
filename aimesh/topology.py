"""The mesh's one description, loaded from topology.yaml into typed, read-only objects."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

DEFAULT_FILE = Path(__file__).with_name("topology.yaml")
METRICS_PORT_SHIFT = 1000   # an instance's Prometheus /metrics is on its gRPC port + this


@dataclass(frozen=True)
class Instance:
    name: str
    port: int
    version: str = ""
    weight: int = 0

    @property
    def metrics_port(self) -> int:
        return self.port + METRICS_PORT_SHIFT


@dataclass(frozen=True)
class Service:
    name: str
    grpc_services: tuple[str, ...]
    instances: tuple[Instance, ...]
    timeout_s: float
    public: tuple[str, ...] = ()
    streams: tuple[str, ...] = ()
    jwks_port: int = 0

    @property
    def module(self) -> str:
        return f"services.{self.name}"


@dataclass(frozen=True)
class Gateway:
    edge_port: int
    mesh_port: int
    admin_port: int
    audience: str
    issuer: str
    stream_idle_timeout_s: float


@dataclass(frozen=True)
class Infra:
    postgres_port: int
    nats_port: int
    nats_monitor_port: int
    triton_http_port: int
    triton_grpc_port: int
    triton_metrics_port: int


@dataclass(frozen=True)
class Topology:
    gateway: Gateway
    infra: Infra
    services: dict[str, Service] = field(default_factory=dict)

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
            "triton metrics": i.triton_metrics_port,
        }
        for service, instance in self.instances():
            ports[instance.name] = instance.port
            ports[f"{instance.name} metrics"] = instance.metrics_port
            if service.jwks_port:
                ports[f"{service.name} jwks"] = service.jwks_port
        return ports


def load(path: Path = DEFAULT_FILE, port_offset: int | None = None) -> Topology:
    """Read the topology; every port is shifted by AIMESH_PORT_OFFSET (tests run beside a dev mesh)."""
    if port_offset is None:
        port_offset = int(os.environ.get("AIMESH_PORT_OFFSET", "0"))
    raw = yaml.safe_load(Path(path).read_text())

    def port(value: int) -> int:
        return int(value) + port_offset

    g, infra = raw["gateway"], raw["infra"]
    gateway = Gateway(
        edge_port=port(g["edge_port"]), mesh_port=port(g["mesh_port"]),
        admin_port=port(g["admin_port"]), audience=g["audience"], issuer=g["issuer"],
        stream_idle_timeout_s=float(g["stream_idle_timeout_s"]),
    )
    infra = Infra(
        postgres_port=port(infra["postgres"]["port"]),
        nats_port=port(infra["nats"]["port"]),
        nats_monitor_port=port(infra["nats"]["monitor_port"]),
        triton_http_port=port(infra["triton"]["http_port"]),
        triton_grpc_port=port(infra["triton"]["grpc_port"]),
        triton_metrics_port=port(infra["triton"]["metrics_port"]),
    )
    services = {}
    for name, s in raw["services"].items():
        instances = tuple(
            Instance(name=i["name"], port=port(i["port"]), version=i.get("version", ""),
                     weight=int(i.get("weight", 0)))
            for i in s["instances"]
        )
        services[name] = Service(
            name=name, grpc_services=tuple(s["grpc_services"]), instances=instances,
            timeout_s=float(s["timeout_s"]), public=tuple(s.get("public", ())),
            streams=tuple(s.get("streams", ())),
            jwks_port=port(s["jwks_port"]) if s.get("jwks_port") else 0,
        )
    return Topology(gateway=gateway, infra=infra, services=services)
