"""`aimesh deploy render`: docker-compose.yml and deploy/k8s/, generated from the one topology.

The local runner, compose and Kubernetes read the same aimesh/topology.yaml: the same instances,
ports, routes, weights and the same Envoy config (aimesh.envoy renders it with the containers'
addressing: in containers a peer is a name, not 127.0.0.1). The files are committed, and
tests/contract/test_deploy.py fails when they are not what `render` gives. The kustomizations
that do not depend on the topology (overlays/gpu, components/{gpu-triton,cert-manager}, each
canary step's) are plain committed files.

What runs where:
  compose (one GPU host): one container per topology instance, Envoy, Triton (GPU reserved),
      Postgres with pgvector, NATS JetStream, Prometheus, Jaeger (OTLP), Grafana.
  kubernetes (deploy/k8s, kustomize): a Deployment per service (one per version of a canary
      service), headless Services so Envoy balances and health-checks every pod, Triton,
      Postgres, NATS; components for the GPU node pool and for canary weight steps.
"""
from __future__ import annotations

import json
from pathlib import Path

import yaml

from .. import envoy
from ..paths import ROOT
from ..topology import DEFAULT_FILE, Topology, load
from .compose import compose, grpc_probe
from .k8s import cert_manager_component, k8s_base_kustomization, k8s_gateway, k8s_infra, k8s_services
from .locks import DATA_PACKAGES, LOCKS, lock, lock_inputs
from .observability import RULES_FILE, dashboard, grafana_dashboards, grafana_datasources, prometheus, rules
from .workloads import (
    CANARY_STEPS,
    CERTS_MOUNT,
    COMPOSE_CERTS,
    COMPOSE_ENVOY_SDS,
    ENVOY_CONFIG_DIR,
    ENVOY_DESCRIPTOR_SET,
    ENVOY_WEB_DIR,
    GENERATED,
    NAMESPACE,
    OTLP_PORT,
    TAG,
    canary_service,
    compose_hosts,
    envoy_certs,
    envoy_config,
    k8s_hosts,
    nats_config,
    password_variable,
    postgres_init,
    with_weights,
    workloads,
)


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data) -> bool:     # a shared dict is written out, not as &id001
        return True


def _yaml(*documents: dict) -> str:
    body = "---\n".join(yaml.dump(d, Dumper=_Dumper, sort_keys=False, width=100)
                         for d in documents)
    return f"# {GENERATED}\n{body}"


def render(topo: Topology | None = None) -> dict[str, str]:
    """Every generated file: repository-relative path -> content."""
    topo = topo or load(DEFAULT_FILE, port_offset=0)
    files = {
        "docker-compose.yml": _yaml(compose(topo)),
        "deploy/compose/envoy.yaml": _yaml(envoy_config(topo, compose_hosts(topo), otlp=True,
                                                        sds_folder=COMPOSE_ENVOY_SDS)),
        "deploy/compose/nats.conf": json.dumps(nats_config(topo), indent=1) + "\n",
        "deploy/compose/prometheus.yml": _yaml(prometheus(topo)),
        f"deploy/compose/{RULES_FILE}": _yaml(rules(topo)),
        "deploy/compose/postgres-init.sh": postgres_init(topo),
        "deploy/grafana/provisioning/datasources/aimesh.yaml": _yaml(grafana_datasources()),
        "deploy/grafana/provisioning/dashboards/aimesh.yaml": _yaml(grafana_dashboards()),
        "deploy/grafana/dashboards/aimesh.json": json.dumps(dashboard(topo), indent=1) + "\n",
        "deploy/k8s/base/kustomization.yaml": _yaml(k8s_base_kustomization(list(topo.services))),
        "deploy/k8s/base/nats.conf": json.dumps(nats_config(topo), indent=1) + "\n",
        "deploy/k8s/base/namespace.yaml": _yaml(
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}),
        "deploy/k8s/base/infra.yaml": _yaml(*k8s_infra(topo)),
        "deploy/k8s/base/gateway.yaml": _yaml(*k8s_gateway(topo)),
        "deploy/k8s/base/services.yaml": _yaml(*k8s_services(topo)),
        "deploy/k8s/base/envoy-config.yaml": _yaml(envoy_config(topo, k8s_hosts(topo), otlp=False,
                                                                sds_folder=ENVOY_CONFIG_DIR)),
        "deploy/k8s/base/postgres-init.sh": postgres_init(topo),
        "deploy/k8s/components/cert-manager/certificates.yaml": _yaml(*cert_manager_component(topo)),
    }
    for name, content in envoy.sds_files(envoy_certs(COMPOSE_ENVOY_SDS)).items():
        files[f"deploy/compose/envoy-sds/{name}"] = _yaml(content)
    for name, content in envoy.sds_files(envoy_certs(ENVOY_CONFIG_DIR)).items():
        files[f"deploy/k8s/base/{name}"] = _yaml(content)
    canary = canary_service(topo)
    for share in CANARY_STEPS if canary else ():
        assert canary is not None
        folder = f"deploy/k8s/components/canary-{share}"
        stepped = with_weights(topo, canary.name, share)
        files[f"{folder}/envoy-config.yaml"] = _yaml(envoy_config(stepped, k8s_hosts(stepped),
                                                                  otlp=False,
                                                                  sds_folder=ENVOY_CONFIG_DIR))
    return files


def write(root: Path = ROOT) -> list[str]:
    """Write every generated file that differs; return the ones written."""
    written = []
    for relative, content in render().items():
        path = root / relative
        if not path.exists() or path.read_text() != content:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content)
            written.append(relative)
    return written


def stale(root: Path = ROOT) -> list[str]:
    """Generated files that are missing or differ from what `render` gives now."""
    return [relative for relative, content in render().items()
            if not (root / relative).exists() or (root / relative).read_text() != content]


__all__ = ["CANARY_STEPS", "CERTS_MOUNT", "COMPOSE_CERTS", "COMPOSE_ENVOY_SDS", "DATA_PACKAGES",
           "ENVOY_CONFIG_DIR", "ENVOY_DESCRIPTOR_SET", "ENVOY_WEB_DIR", "LOCKS", "OTLP_PORT", "TAG",
           "canary_service", "envoy_certs", "grpc_probe", "lock", "lock_inputs", "password_variable",
           "render", "stale", "with_weights", "workloads", "write"]
