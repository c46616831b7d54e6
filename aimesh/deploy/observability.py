"""Prometheus scrape config and the Grafana dashboard and provisioning, for compose."""
from __future__ import annotations

from collections.abc import Callable

from ..topology import Topology
from .workloads import JAEGER_UI_PORT, PROMETHEUS_PORT, canary_service

RULES_FILE = "rules.yml"


def prometheus(topo: Topology, host: Callable[[str], str] = lambda name: name,
               rules_path: str = RULES_FILE) -> dict:
    """Every metrics endpoint: each instance's /metrics, Envoy's stats, Triton's; `host` names
    each component's host (containers: its name; here: loopback); the rules file beside it."""
    g, i, o = topo.gateway, topo.infra, topo.observability
    return {
        "global": {"scrape_interval": seconds(o.scrape_interval_s),
                   "evaluation_interval": seconds(o.evaluation_interval_s)},
        "rule_files": [rules_path],
        "scrape_configs": [
            {"job_name": "services", "static_configs": [
                {"targets": [f"{host(inst.name)}:{inst.metrics_port}"],
                 "labels": {"instance_name": inst.name, "aimesh_service": svc.name}}
                for svc, inst in topo.instances()]},
            {"job_name": "envoy", "metrics_path": "/stats/prometheus",
             "static_configs": [{"targets": [f"{host('envoy')}:{g.admin_port}"]}]},
            {"job_name": "triton", "static_configs": [{"targets": [f"{host('triton')}:{i.triton_metrics_port}"]}]},
        ],
    }


# Route = service.Method from the kit's labels (service "recommend", method "/pkg.Service/Recommend").
_ROUTE = 'label_join(label_replace({metric}, "m", "$1", "method", ".*/(.*)"), "route", ".", "service", "m")'
SERVER_FAULTS = "UNKNOWN|DEADLINE_EXCEEDED|UNIMPLEMENTED|INTERNAL|UNAVAILABLE|DATA_LOSS"
QUEUE_DEPTH_ALERT = 8      # requests waiting in Triton for one model


def rules(topo: Topology) -> dict:
    """Recording rules (per route RED, per model latency) and alerts: each SLO's availability
    (server faults and fallbacks against it) and p99, a breaker open, a deep Triton queue."""
    def route(metric: str) -> str:
        return _ROUTE.format(metric=metric)
    faults = 'code=~"' + SERVER_FAULTS + '"'
    handled, buckets = "aimesh_grpc_server_handled_total", "aimesh_grpc_server_handling_seconds_bucket"
    recording = [
        {"record": "aimesh:route_requests:rate1m",
         "expr": f"sum by (route) ({route(f'rate({handled}[1m])')})"},
        {"record": "aimesh:route_errors:rate1m",
         "expr": f"sum by (route) ({route(f'rate({handled}{{{faults}}}[1m])')})"},
        {"record": "aimesh:route_fallbacks:rate1m",
         "expr": 'sum by (route) (rate(aimesh_fallbacks_total{cause!="cold_start"}[1m]))'},
        {"record": "aimesh:route_latency_seconds:p99",
         "expr": f"histogram_quantile(0.99, sum by (route, le) ({route(f'rate({buckets}[1m])')}))"},
        {"record": "aimesh:model_latency_seconds:mean",
         "expr": 'sum by (model) (rate(nv_inference_request_duration_us[1m])) / '
                 'sum by (model) (rate(nv_inference_request_success[1m])) / 1e6'},
    ]
    hold = seconds(topo.observability.alert_for_s)
    alerts = []
    for name, slo in topo.slos.items():
        selector = f'{{route="{name}"}}'
        alerts.append({
            "alert": "SloAvailability", "for": hold, "labels": {"severity": "page", "route": name},
            "expr": f'(sum(aimesh:route_errors:rate1m{selector}) or vector(0)) + '
                    f'(sum(aimesh:route_fallbacks:rate1m{selector}) or vector(0)) > '
                    f'{1 - slo.availability:g} * sum(aimesh:route_requests:rate1m{selector})',
            "annotations": {"summary": f"{name}: errors and fallbacks over {1 - slo.availability:.2%} of calls"}})
        alerts.append({
            "alert": "SloLatency", "for": hold, "labels": {"severity": "page", "route": name},
            "expr": f"aimesh:route_latency_seconds:p99{selector} > {slo.p99_s:g}",
            "annotations": {"summary": f"{name}: p99 over {slo.p99_s * 1000:g} ms"}})
    alerts += [
        {"alert": "BreakerOpen", "for": hold, "labels": {"severity": "page"},
         "expr": "max by (instance_name, breaker) (aimesh_breaker_state) == 1",
         "annotations": {"summary": "{{ $labels.instance_name }}: breaker {{ $labels.breaker }} open"}},
        {"alert": "TritonQueueDeep", "for": hold, "labels": {"severity": "warn"},
         "expr": f"sum by (model) (nv_inference_pending_request_count) > {QUEUE_DEPTH_ALERT}",
         "annotations": {"summary": "{{ $labels.model }}: more than " + f"{QUEUE_DEPTH_ALERT} requests waiting"}},
        {"alert": "ConsumerLagging", "for": hold, "labels": {"severity": "warn"},
         "expr": "max by (stream, consumer) (aimesh_events_pending) > 1000",
         "annotations": {"summary": "{{ $labels.consumer }} is over 1000 events behind on {{ $labels.stream }}"}},
    ]
    return {"groups": [{"name": "aimesh-recording", "rules": recording},
                       {"name": "aimesh-alerts", "rules": alerts}]}


def seconds(value: float) -> str:
    return f"{value:g}s"


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
