"""docker-compose.yml: one container per topology instance, Envoy, Triton, the stores, and the
observability stack."""
from __future__ import annotations

from typing import Any

from services.kit.tls import GATEWAY

from .. import certs
from ..infra import DATABASE
from ..topology import Topology
from .observability import RULES_FILE
from .workloads import (
    CERTS_MOUNT,
    COMPOSE_CERTS,
    COMPOSE_ENVOY_SDS,
    DEV_POSTGRES_PASSWORD,
    GRAFANA_IMAGE,
    GRAFANA_PORT,
    JAEGER_IMAGE,
    JAEGER_UI_PORT,
    NATS_CONFIG,
    NATS_IMAGE,
    OTLP_HTTP_PORT,
    POSTGRES_IMAGE,
    PROMETHEUS_IMAGE,
    PROMETHEUS_PORT,
    SERVICE_DOCKERFILE,
    TAG,
    TRITON_DOCKERFILE,
    container_env,
    dev_password,
    image,
    password_variable,
    triton_args,
)


def _healthcheck(test: list[str], *, start_s: int = 5, retries: int = 30) -> dict:
    return {"test": test, "interval": "5s", "timeout": "3s", "retries": retries,
            "start_period": f"{start_s}s"}


def grpc_probe(port: int) -> list[str]:
    """grpc.health.v1 Check of the server in this container (services/kit/probe.py)."""
    return ["CMD", "python", "-m", "services.kit.probe", str(port)]


def _compose_password(variable: str, default: str) -> str:
    return f"${{{variable}:-{default}}}"


def _compose_certs(workload: str) -> str:
    """The workload's own certificate folder, and nobody else's."""
    return f"./{COMPOSE_CERTS}/{workload}:{CERTS_MOUNT}:ro"


def compose(topo: Topology) -> dict:
    g, i = topo.gateway, topo.infra
    password = _compose_password("POSTGRES_PASSWORD", DEV_POSTGRES_PASSWORD)
    healthy = {"condition": "service_healthy"}
    stores = {"postgres": healthy, "nats": healthy}
    roles = {password_variable(s): _compose_password(password_variable(s), dev_password(s))
             for s in topo.services}
    containers: dict[str, dict[str, Any]] = {
        "postgres": {
            "image": POSTGRES_IMAGE,
            "command": ["postgres", "-c", f"port={i.postgres_port}", "-c", "max_connections=200"],
            "environment": {"POSTGRES_DB": DATABASE, "POSTGRES_USER": "postgres",
                            "POSTGRES_PASSWORD": password, **roles},
            "volumes": ["postgres:/var/lib/postgresql",
                        "./deploy/compose/postgres-init.sh:/docker-entrypoint-initdb.d/aimesh.sh:ro"],
            "healthcheck": _healthcheck(["CMD", "pg_isready", "-U", "postgres", "-d", DATABASE,
                                         "-p", str(i.postgres_port)]),
        },
        "nats": {
            "image": NATS_IMAGE,
            "command": ["-c", NATS_CONFIG],
            "volumes": ["nats:/data", f"./deploy/compose/nats.conf:{NATS_CONFIG}:ro",
                        _compose_certs(certs.NATS)],
            "healthcheck": _healthcheck(["CMD", "wget", "-q", "-O", "/dev/null",
                                         f"http://127.0.0.1:{i.nats_monitor_port}/healthz?js-enabled-only=true"]),
        },
        "triton": {
            "build": {"context": ".", "dockerfile": TRITON_DOCKERFILE},
            "image": f"aimesh/triton:{TAG}",
            "command": triton_args(topo, otlp_http=f"http://jaeger:{OTLP_HTTP_PORT}/v1/traces"),
            "shm_size": "1gb",               # the python backend passes tensors through /dev/shm
            # Plaintext gRPC: only Envoy (and Jaeger, which takes its spans) share this network
            # with it (docs/deploy.md).
            "networks": ["inference"],
            "deploy": {"resources": {"reservations": {"devices": [
                {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]}}},
            "healthcheck": _healthcheck(["CMD", "python3", "-c", (
                "import urllib.request; urllib.request.urlopen("
                f"'http://127.0.0.1:{i.triton_http_port}/v2/health/ready', timeout=2)")],
                start_s=120),
        },
    }
    built = set()
    for service, instance in topo.instances():
        container: dict[str, Any] = {}
        if service.name not in built:         # one build per image; other instances reuse it
            container["build"] = {"context": ".", "dockerfile": SERVICE_DOCKERFILE,
                                  "target": "service", "args": {"SERVICE": service.name}}
            built.add(service.name)
        db_password = _compose_password(password_variable(service.name), dev_password(service.name))
        env = container_env(topo, service, instance, db_password=db_password, otlp=True)
        container.update({
            "image": image(service),
            "environment": env,
            "volumes": [_compose_certs(service.name)],
            "depends_on": stores,
            "healthcheck": _healthcheck(grpc_probe(instance.probe_port)),
            "stop_grace_period": f"{int(float(env['AIMESH_GRACE_S'])) + 5}s",
        })
        containers[instance.name] = container
    containers["envoy"] = {
        "build": {"context": ".", "dockerfile": SERVICE_DOCKERFILE, "target": "envoy"},
        "image": f"aimesh/envoy:{TAG}",
        "volumes": ["./deploy/compose/envoy.yaml:/etc/envoy/envoy.yaml:ro",
                    f"./deploy/compose/envoy-sds:{COMPOSE_ENVOY_SDS}:ro",
                    _compose_certs(GATEWAY)],
        "ports": [f"{g.edge_port}:{g.edge_port}", f"127.0.0.1:{g.admin_port}:{g.admin_port}"],
        "networks": ["default", "inference"],
        # The JWKS fetch and the first health checks find every service up.
        "depends_on": {inst.name: healthy for _, inst in topo.instances()},
        "healthcheck": _healthcheck(["CMD", "bash", "-c", envoy_ready(g.admin_port)]),
    }
    containers["prometheus"] = {
        "image": PROMETHEUS_IMAGE,
        "volumes": ["./deploy/compose/prometheus.yml:/etc/prometheus/prometheus.yml:ro",
                    f"./deploy/compose/{RULES_FILE}:/etc/prometheus/{RULES_FILE}:ro"],
        "ports": [f"127.0.0.1:{PROMETHEUS_PORT}:{PROMETHEUS_PORT}"],
    }
    containers["jaeger"] = {
        "image": JAEGER_IMAGE,                # receives OTLP from Envoy, Triton and every service
        "ports": [f"127.0.0.1:{JAEGER_UI_PORT}:{JAEGER_UI_PORT}"],
        "networks": ["default", "inference"],   # Triton's network has no other way out
    }
    containers["grafana"] = {
        "image": GRAFANA_IMAGE,
        "environment": {"GF_AUTH_ANONYMOUS_ENABLED": "true",
                        "GF_AUTH_ANONYMOUS_ORG_ROLE": "Viewer"},
        "volumes": ["./deploy/grafana/provisioning:/etc/grafana/provisioning:ro",
                    "./deploy/grafana/dashboards:/var/lib/grafana/dashboards:ro"],
        "ports": [f"127.0.0.1:{GRAFANA_PORT}:{GRAFANA_PORT}"],
        "depends_on": {"prometheus": {"condition": "service_started"}},
    }
    volumes: dict[str, dict] = {"postgres": {}, "nats": {}}
    networks = {"default": {}, "inference": {"internal": True}}
    return {"name": "aimesh", "services": containers, "volumes": volumes, "networks": networks}


def envoy_ready(admin_port: int) -> str:
    """Envoy's /ready through bash alone (the image has no curl)."""
    return (f"exec 3<>/dev/tcp/127.0.0.1/{admin_port} && "
            "printf 'GET /ready HTTP/1.0\\r\\n\\r\\n' >&3 && grep -q LIVE <&3")
