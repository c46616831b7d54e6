"""Kubernetes: the kustomize base (services, gateway, infra) and its components."""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

from services.kit.tls import GATEWAY, dns_name, spiffe_id
from services.ops.overview import Targets

from .. import certs, envoy, live
from ..infra import DATABASE
from ..services import OPS
from ..topology import Topology
from .workloads import (
    CERTS_MOUNT,
    DEV_POSTGRES_PASSWORD,
    ENVOY_CONFIG_DIR,
    NAMESPACE,
    NATS_CONFIG,
    NATS_IMAGE,
    POSTGRES_IMAGE,
    SCALE_LIMIT,
    TAG,
    container_env,
    dev_password,
    image,
    password_variable,
    triton_args,
    workloads,
)


def _labels(name: str) -> dict:
    return {"app.kubernetes.io/name": name}


def _meta(name: str, **extra) -> dict:
    return {"name": name, "labels": _labels(name), **extra}


def _grpc_probes(port: int) -> dict:
    # Native gRPC probes call grpc.health.v1 Check; a draining server says NOT_SERVING first.
    # They cannot do TLS: `port` is the instance's plaintext probe port (health only).
    return {
        "startupProbe": {"grpc": {"port": port}, "periodSeconds": 2, "failureThreshold": 60},
        "readinessProbe": {"grpc": {"port": port}, "periodSeconds": 5},
        "livenessProbe": {"grpc": {"port": port}, "periodSeconds": 10, "failureThreshold": 3},
    }


RESTRICTED = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def _deployment(name: str, replicas: int, container: dict, *, pod: dict | None = None,
                annotations: dict | None = None) -> dict:
    template_meta = {"labels": _labels(name)}
    if annotations:
        template_meta["annotations"] = annotations
    return {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": _meta(name),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": _labels(name)},
            "template": {"metadata": template_meta,
                         "spec": {"containers": [{"name": name, **container}], **(pod or {})}},
        },
    }


def _service(name: str, ports: dict[str, int], *, headless: bool = True) -> dict:
    spec = {"selector": _labels(name),
            "ports": [{"name": n, "port": p, "targetPort": p} for n, p in ports.items()]}
    if headless:
        spec["clusterIP"] = "None"       # DNS gives every pod: Envoy balances and checks each
    return {"apiVersion": "v1", "kind": "Service", "metadata": _meta(name), "spec": spec}


def _pdb(name: str) -> dict:
    return {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": _meta(name),
            "spec": {"maxUnavailable": 1, "selector": {"matchLabels": _labels(name)}}}


def _hpa(name: str, replicas: int) -> dict:
    return {
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": _meta(name),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicas": replicas, "maxReplicas": replicas * SCALE_LIMIT,
            "metrics": [{"type": "Resource", "resource": {
                "name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}}],
        },
    }


def _scrape(port: int, path: str = "/metrics") -> dict:
    """Annotations a Prometheus with the usual kubernetes_sd relabelling scrapes by."""
    return {"prometheus.io/scrape": "true", "prometheus.io/port": str(port),
            "prometheus.io/path": path}


def k8s_services(topo: Topology) -> list[dict]:
    documents = []
    for workload in workloads(topo):
        service, port = workload.service, workload.instance.port
        env = container_env(topo, service, workload.instance,
                            db_password="$(DB_PASSWORD)", otlp=False, targets=ops_targets(topo))
        del env["AIMESH_INSTANCE"]             # the pod's own name, below
        metrics_port = int(env["AIMESH_METRICS_PORT"])
        probe_port = workload.instance.probe_port
        ports = {"grpc": port, "metrics": metrics_port, "probe": probe_port}
        if service.jwks_port:
            ports["jwks"] = service.jwks_port
        container = {
            "image": image(service),
            "env": [{"name": "DB_PASSWORD", "valueFrom": {"secretKeyRef": {
                        "name": f"postgres-{service.name}", "key": "password"}}},
                    {"name": "AIMESH_INSTANCE", "valueFrom": {"fieldRef": {
                        "fieldPath": "metadata.name"}}},
                    *({"name": k, "value": v} for k, v in env.items())],
            "ports": [{"name": n, "containerPort": p} for n, p in ports.items()],
            **_grpc_probes(probe_port),
            "resources": {"requests": {"cpu": "100m", "memory": "256Mi"},
                          "limits": {"memory": "1Gi"}},
            "securityContext": RESTRICTED,
            "volumeMounts": [_certs_mount()],
        }
        pod = {"terminationGracePeriodSeconds": int(float(env["AIMESH_GRACE_S"])) + 5,
               "securityContext": {"runAsNonRoot": True},
               "volumes": [_certs_volume(service.name)]}
        documents += [
            _deployment(workload.name, workload.replicas, container, pod=pod,
                        annotations=_scrape(metrics_port)),
            _service(workload.name, ports),
            _pdb(workload.name),
        ]
        if workload.scalable:
            documents.append(_hpa(workload.name, workload.replicas))
    return documents


def _certs_volume(workload: str) -> dict:
    """The workload's certificate Secret (cert-manager's, components/cert-manager), as files
    the kubelet replaces on renewal (Envoy and the kit pick them up)."""
    return {"name": "certs", "secret": {"secretName": f"{workload}-tls"}}


def _certs_mount() -> dict:
    return {"name": "certs", "mountPath": CERTS_MOUNT, "readOnly": True}


def k8s_gateway(topo: Topology) -> list[dict]:
    g = topo.gateway
    container = {
        "image": f"aimesh/envoy:{TAG}",
        "args": ["-c", f"{ENVOY_CONFIG_DIR}/envoy.yaml", "--log-level", "warn"],
        "ports": [{"name": "edge", "containerPort": g.edge_port},
                  {"name": "mesh", "containerPort": g.mesh_port},
                  {"name": "admin", "containerPort": g.admin_port}],
        "readinessProbe": {"httpGet": {"path": "/ready", "port": g.admin_port}, "periodSeconds": 5},
        "livenessProbe": {"httpGet": {"path": "/ready", "port": g.admin_port},
                          "periodSeconds": 10, "failureThreshold": 3},
        "resources": {"requests": {"cpu": "250m", "memory": "128Mi"},
                      "limits": {"memory": "512Mi"}},
        "securityContext": RESTRICTED,
        "volumeMounts": [{"name": "config", "mountPath": ENVOY_CONFIG_DIR, "readOnly": True},
                         _certs_mount()],
    }
    pod = {"volumes": [{"name": "config", "configMap": {"name": "envoy"}}, _certs_volume(GATEWAY)]}
    return [
        _deployment("envoy", 2, container, pod=pod,
                    annotations=_scrape(g.admin_port, "/stats/prometheus")),
        # Not headless: one stable address for clients (edge) and services (east-west).
        _service("envoy", {"edge": g.edge_port, "mesh": g.mesh_port, "admin": g.admin_port},
                 headless=False),
        _pdb("envoy"),
        _hpa("envoy", 2),
    ]


def k8s_infra(topo: Topology) -> list[dict]:
    i = topo.infra
    triton = {
        "image": f"aimesh/triton:{TAG}",
        "args": triton_args(topo),
        "ports": [{"name": "http", "containerPort": i.triton_http_port},
                  {"name": "grpc", "containerPort": i.triton_grpc_port},
                  {"name": "metrics", "containerPort": i.triton_metrics_port}],
        "startupProbe": {"httpGet": {"path": "/v2/health/ready", "port": i.triton_http_port},
                         "periodSeconds": 5, "failureThreshold": 120},
        "readinessProbe": {"httpGet": {"path": "/v2/health/ready", "port": i.triton_http_port},
                           "periodSeconds": 5},
        "livenessProbe": {"httpGet": {"path": "/v2/health/live", "port": i.triton_http_port},
                          "periodSeconds": 10},
        "resources": {"requests": {"cpu": "1", "memory": "4Gi"}, "limits": {"memory": "16Gi"}},
        "volumeMounts": [{"name": "shm", "mountPath": "/dev/shm"}],
    }
    triton_pod = {"volumes": [{"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}}]}
    return [
        _deployment("triton", 1, triton, pod=triton_pod, annotations=_scrape(i.triton_metrics_port)),
        _service("triton", {"http": i.triton_http_port, "grpc": i.triton_grpc_port,
                            "metrics": i.triton_metrics_port}),
        _pdb("triton"),
        _stateful_set("postgres", {
            "image": POSTGRES_IMAGE,
            "args": ["-c", f"port={i.postgres_port}", "-c", "max_connections=200"],
            "env": [{"name": "POSTGRES_DB", "value": DATABASE},
                    {"name": "POSTGRES_USER", "value": "postgres"},
                    {"name": "POSTGRES_PASSWORD", "valueFrom": {"secretKeyRef": {
                        "name": "postgres", "key": "password"}}},
                    *({"name": password_variable(s), "valueFrom": {"secretKeyRef": {
                        "name": f"postgres-{s}", "key": "password"}}} for s in topo.services)],
            "ports": [{"name": "postgres", "containerPort": i.postgres_port}],
            "readinessProbe": {"exec": {"command": ["pg_isready", "-U", "postgres", "-d", DATABASE,
                                                    "-p", str(i.postgres_port)]},
                               "periodSeconds": 5},
            "resources": {"requests": {"cpu": "250m", "memory": "512Mi"}},
            "volumeMounts": [{"name": "data", "mountPath": "/var/lib/postgresql"},
                             {"name": "init", "mountPath": "/docker-entrypoint-initdb.d"}],
        }, extra_volumes=[{"name": "init", "configMap": {"name": "postgres-init"}}]),
        _service("postgres", {"postgres": i.postgres_port}),
        _stateful_set("nats", {
            "image": NATS_IMAGE,
            "args": ["-c", NATS_CONFIG],
            "ports": [{"name": "client", "containerPort": i.nats_port},
                      {"name": "monitor", "containerPort": i.nats_monitor_port}],
            "readinessProbe": {"httpGet": {"path": "/healthz?js-enabled-only=true",
                                           "port": i.nats_monitor_port}, "periodSeconds": 5},
            "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
            "volumeMounts": [{"name": "data", "mountPath": "/data"},
                             {"name": "config", "mountPath": str(Path(NATS_CONFIG).parent)},
                             _certs_mount()],
        }, extra_volumes=[{"name": "config", "configMap": {"name": "nats"}},
                          _certs_volume(certs.NATS)]),
        _service("nats", {"client": i.nats_port, "monitor": i.nats_monitor_port}),
        _triton_policy(topo),
    ]


def _triton_policy(topo: Topology) -> dict:
    """Triton speaks plaintext gRPC: only Envoy's pods may reach it; its HTTP and metrics ports
    only the ops service's (models loaded, queues), nobody else in the cluster (the operator uses
    `kubectl port-forward`, Prometheus the pod's IP through its own policy)."""
    i = topo.infra
    ingress = [{"from": [{"podSelector": {"matchLabels": _labels("envoy")}}],
                "ports": [{"port": i.triton_grpc_port}]}]
    if OPS in topo.services:
        ingress.append({"from": [{"podSelector": {"matchLabels": _labels(OPS)}}],
                        "ports": [{"port": i.triton_http_port}, {"port": i.triton_metrics_port}]})
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": _meta("triton"),
            "spec": {"podSelector": {"matchLabels": _labels("triton")}, "policyTypes": ["Ingress"],
                     "ingress": ingress}}


def ops_targets(topo: Topology) -> Targets:
    """In a cluster the ops service reads each workload through its Service: one pod of a
    replicated workload per reading (a shortcut: per-pod numbers need Prometheus)."""
    overview = live.targets(topo, host=lambda name: name)
    per_workload = {w.name: f"http://{w.name}:{w.instance.metrics_port}/metrics" for w in workloads(topo)}
    return dataclasses.replace(overview, instances=per_workload)


def _stateful_set(name: str, container: dict, *, extra_volumes: Sequence[dict] = ()) -> dict:
    pod = {"containers": [{"name": name, **container}]}
    if extra_volumes:
        pod["volumes"] = list(extra_volumes)
    return {
        "apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": _meta(name),
        "spec": {
            "serviceName": name, "replicas": 1,
            "selector": {"matchLabels": _labels(name)},
            "template": {"metadata": {"labels": _labels(name)}, "spec": pod},
            "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {
                "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "10Gi"}}}}],
        },
    }


ENVOY_SDS_FILES = [f"envoy-{name}.yaml" for name in (envoy.OWN_CERTIFICATE, envoy.TRUST)]


def k8s_base_kustomization(services: list[str]) -> dict:
    return {
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "namespace": NAMESPACE,
        "labels": [{"pairs": {"app.kubernetes.io/part-of": "aimesh"}}],
        "resources": ["namespace.yaml", "infra.yaml", "gateway.yaml", "services.yaml"],
        "configMapGenerator": [
            {"name": "envoy", "files": ["envoy.yaml=envoy-config.yaml", *ENVOY_SDS_FILES]},
            {"name": "nats", "files": ["nats.conf"]},
            {"name": "postgres-init", "files": ["aimesh.sh=postgres-init.sh"]},
        ],
        # Development passwords: replace with your own Secrets (docs/deploy.md).
        "secretGenerator": [{"name": "postgres", "literals": [f"password={DEV_POSTGRES_PASSWORD}"]},
                            *({"name": f"postgres-{s}", "literals": [f"password={dev_password(s)}"]}
                              for s in services)],
    }


def cert_manager_component(topo: Topology) -> list[dict]:
    """A Certificate per workload from cert-manager (which must run in the cluster), issued by
    the `aimesh-ca` Issuer from your CA in the `aimesh-ca` Secret (docs/deploy.md): the same
    SPIFFE ids, lifetime and renewal point as the local runner's."""
    lifetime_h = topo.identity.certificate_lifetime_s / 3600
    issuer = {"apiVersion": "cert-manager.io/v1", "kind": "Issuer", "metadata": {"name": "aimesh-ca"},
              "spec": {"ca": {"secretName": "aimesh-ca"}}}
    documents = [issuer]
    for workload in [w for w in topo.workloads() if w != certs.OPERATOR]:
        documents.append({
            "apiVersion": "cert-manager.io/v1", "kind": "Certificate",
            "metadata": {"name": workload},
            "spec": {
                "secretName": f"{workload}-tls",
                "duration": f"{lifetime_h:g}h",
                "renewBefore": f"{lifetime_h * (1 - certs.RENEW_AT):g}h",
                "privateKey": {"algorithm": "ECDSA", "size": 256, "rotationPolicy": "Always"},
                "uris": [spiffe_id(workload)],
                "dnsNames": [dns_name(workload), workload, f"{workload}.{NAMESPACE}.svc"],
                "usages": ["server auth", "client auth", "digital signature", "key encipherment"],
                "issuerRef": {"name": "aimesh-ca", "kind": "Issuer"},
            }})
    return documents
