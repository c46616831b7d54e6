"""The Python services as processes: one per instance in the topology."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from services.kit.config import Config
from services.kit.probe import serving

from . import certs, hotswap, live
from .component import Component
from .infra import postgres_dsn
from .paths import DESCRIPTOR_SET, ROOT
from .topology import Instance, Service, Topology

OPS = "ops"     # the service that reads the whole mesh's numbers (services/ops)


def config(topo: Topology, service: Service, instance: Instance, state_dir: Path, *,
           demo: bool) -> Config:
    g, infra = topo.gateway, topo.infra
    authority = certs.Authority(state_dir)
    mtls = topo.identity.mtls
    return Config(
        service=service.name, instance=instance.name, version=instance.version,
        port=instance.port, metrics_port=instance.metrics_port, probe_port=instance.probe_port,
        certificate=str(authority.bundle(service.name)) if mtls else "",
        trust_bundle=str(authority.trust_bundle) if mtls else "",
        postgres_dsn=postgres_dsn(infra, state_dir, service.name),
        nats_url=f"{'tls' if mtls else 'nats'}://127.0.0.1:{infra.nats_port}",
        mesh_address=f"127.0.0.1:{g.mesh_port}", triton_address=f"127.0.0.1:{g.mesh_port}",
        model_versions=str(hotswap.path(state_dir)),
        descriptor_set=str(DESCRIPTOR_SET), jwks_port=service.jwks_port,
        audience=g.audience, issuer=g.issuer, jwks_cache_s=g.jwks_cache_s, demo=demo,
        generations_per_user=service.generations_per_user, temperature=service.temperature,
        full_length=service.full_length,
        retention=topo.retention.to_json(),
        ops_targets=live.targets(topo).to_json() if service.name == OPS else "",
        trace_sampling=topo.observability.trace_sampling,
        agents=json.dumps(topo.identity.agents(service.name)), saga=json.dumps(service.saga),
        crash_points=str(crash_points(state_dir)),
    )


def crash_points(state_dir: Path) -> Path:
    """Where the chaos tests name the points at which a service dies (kit.crash_point)."""
    return state_dir / "crash-points"



def component(topo: Topology, service: Service, instance: Instance, state_dir: Path, *,
              demo: bool = True) -> Component:
    settings = config(topo, service, instance, state_dir, demo=demo)
    return Component(
        name=instance.name,
        argv=[sys.executable, "-m", service.module],
        env={**settings.to_env(), "PYTHONPATH": f"{ROOT}:{ROOT / 'gen' / 'python'}"},
        cwd=ROOT,
        healthy=lambda: serving(f"127.0.0.1:{instance.probe_port}"),
        start_timeout_s=30,
        stop_timeout_s=settings.grace_s + 5,
    )
