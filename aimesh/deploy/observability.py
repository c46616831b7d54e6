"""Prometheus scrape config and the Grafana dashboard and provisioning, for compose."""
from __future__ import annotations

from ..topology import Topology
from .workloads import JAEGER_UI_PORT, PROMETHEUS_PORT, canary_service


def prometheus(topo: Topology) -> dict:
    """Every metrics endpoint: each instance's /metrics, Envoy's stats, Triton's."""
    g, i = topo.gateway, topo.infra
    return {
        "global": {"scrape_interval": "15s"},
        "scrape_configs": [
            {"job_name": "services", "static_configs": [
                {"targets": [f"{inst.name}:{inst.metrics_port}"],
                 "labels": {"instance_name": inst.name, "aimesh_service": svc.name}}
                for svc, inst in topo.instances()]},
            {"job_name": "envoy", "metrics_path": "/stats/prometheus",
             "static_configs": [{"targets": [f"envoy:{g.admin_port}"]}]},
            {"job_name": "triton", "static_configs": [{"targets": [f"triton:{i.triton_metrics_port}"]}]},
        ],
    }


def dashboard(topo: Topology) -> dict:
    """Per-service RED (from the kit's aimesh_grpc_server_* metrics), inference latency (Triton's
    nv_inference_*), circuit breaking and ejections, and the canary split (Envoy cluster stats)."""
    canary = canary_service(topo)
    canary_clusters = f"{canary.name}-.*" if canary else ".*"
    panels = [
        ("Requests per second, by service",
         'sum by (service) (rate(aimesh_grpc_server_handled_total[1m]))', "reqps"),
        ("Errors per second (status not OK), by service",
         'sum by (service) (rate(aimesh_grpc_server_handled_total{code!="OK"}[1m]))', "reqps"),
        ("p95 latency, by service",
         'histogram_quantile(0.95, sum by (le, service) '
         '(rate(aimesh_grpc_server_handling_seconds_bucket[5m])))', "s"),
        ("Inference: mean request latency, by model",
         'sum by (model) (rate(nv_inference_request_duration_us[1m])) / '
         'sum by (model) (rate(nv_inference_request_success[1m])) / 1e6', "s"),
        ("Inference: mean queue time, by model",
         'sum by (model) (rate(nv_inference_queue_duration_us[1m])) / '
         'sum by (model) (rate(nv_inference_request_success[1m])) / 1e6', "s"),
        ("Inference: executions vs requests (batching), by model",
         'sum by (model) (rate(nv_inference_exec_count[1m])) / '
         'sum by (model) (rate(nv_inference_count[1m]))', "percentunit"),
        ("Circuit breakers open and hosts ejected, by cluster",
         'sum by (envoy_cluster_name) (envoy_cluster_circuit_breakers_default_rq_open '
         '+ envoy_cluster_outlier_detection_ejections_active)', "short"),
        (f"Canary split: share of {canary.name if canary else 'canary'} calls, by version",
         f'sum by (envoy_cluster_name) (rate(envoy_cluster_upstream_rq_total'
         f'{{envoy_cluster_name=~"{canary_clusters}"}}[5m])) / ignoring(envoy_cluster_name) '
         f'group_left sum(rate(envoy_cluster_upstream_rq_total'
         f'{{envoy_cluster_name=~"{canary_clusters}"}}[5m]))', "percentunit"),
    ]
    return {
        "uid": "aimesh", "title": "aimesh", "schemaVersion": 39, "refresh": "10s",
        "time": {"from": "now-30m", "to": "now"},
        "panels": [{
            "id": number, "type": "timeseries", "title": title,
            "datasource": {"type": "prometheus", "uid": "prometheus"},
            "gridPos": {"h": 8, "w": 12, "x": 12 * ((number - 1) % 2), "y": 8 * ((number - 1) // 2)},
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
            "targets": [{"refId": "A", "expr": expr}],
        } for number, (title, expr, unit) in enumerate(panels, 1)],
    }


def grafana_datasources() -> dict:
    return {"apiVersion": 1, "datasources": [
        {"name": "Prometheus", "uid": "prometheus", "type": "prometheus", "access": "proxy",
         "url": f"http://prometheus:{PROMETHEUS_PORT}", "isDefault": True},
        {"name": "Jaeger", "uid": "jaeger", "type": "jaeger", "access": "proxy",
         "url": f"http://jaeger:{JAEGER_UI_PORT}"},
    ]}


def grafana_dashboards() -> dict:
    return {"apiVersion": 1, "providers": [{"name": "aimesh", "type": "file", "options": {
        "path": "/var/lib/grafana/dashboards"}}]}
