"""Clusters: service instances with circuit breakers, health checks and outlier detection."""
from __future__ import annotations

from aimesh.topology import Topology

from .common import (
    HTTP2_WINDOWS,
    JWKS_CLUSTER,
    OTLP_CLUSTER,
    TRITON,
    Addressing,
    cluster_name,
    issuer_service,
    seconds,
    version_cluster,
    version_pins,
)
from .tls import Tls


def all_clusters(topo: Topology, otlp_endpoint: str, tls: Tls | None,
                 addressing: Addressing) -> list[dict]:
    clusters = []
    for service in topo.services.values():
        if version_pins(service):
            versions = [_cluster(version_cluster(service, i.version), [i.port], topo, addressing)
                        for i in service.instances if i.version]
        else:
            versions = [_cluster(cluster_name(service), [i.port for i in service.instances], topo,
                                 addressing)]
        for cluster in versions:
            if tls:
                cluster["transport_socket"] = tls.upstream(service.name)
        clusters += versions
    # Triton's python backend stub answers no grpc.health.v1: no active checks there. Triton
    # listens on loopback in plaintext, reached only through this listener (docs/deploy.md).
    clusters.append(_cluster(TRITON.name, [topo.infra.triton_grpc_port], topo, addressing,
                             health_checks=False))
    issuer = issuer_service(topo)
    jwks = _plain_cluster(JWKS_CLUSTER, addressing.upstreams([issuer.jwks_port]), http2=False)
    if tls:
        jwks["transport_socket"] = tls.upstream(issuer.name, http2=False)
    clusters.append(jwks)
    if addressing.by_name:
        for cluster in clusters:
            cluster["type"] = "STRICT_DNS"
            cluster["dns_lookup_family"] = "V4_PREFERRED"
    if otlp_endpoint:
        host, port = otlp_endpoint.rsplit(":", 1)
        clusters.append({**_plain_cluster(OTLP_CLUSTER, [(host, int(port))]),
                         "type": "STRICT_DNS"})     # the collector may be named, not numbered
    return clusters


def _cluster(name: str, ports: list[int], topo: Topology, addressing: Addressing, *,
             health_checks: bool = True) -> dict:
    """A cluster of service instances, with the mesh's circuit breakers, health checks and (when
    there is another host to send to) outlier detection."""
    r = topo.gateway.resilience
    cluster = _plain_cluster(name, addressing.upstreams(ports))
    cluster["circuit_breakers"] = {"thresholds": [{
        "max_connections": r.max_connections,
        "max_pending_requests": r.max_pending_requests,
        "max_requests": r.max_requests,
        "retry_budget": {"budget_percent": {"value": r.retry_budget_percent},
                         "min_retry_concurrency": 3},
    }]}
    # With every host unhealthy or ejected, fail fast rather than route to them anyway (panic).
    cluster["common_lb_config"] = {"healthy_panic_threshold": {"value": 0}}
    if health_checks:
        cluster["health_checks"] = [{
            "timeout": seconds(r.health_timeout_s),
            "interval": seconds(r.health_interval_s),
            "no_traffic_interval": seconds(r.health_interval_s),
            "unhealthy_threshold": r.unhealthy_threshold,
            "healthy_threshold": 1,
            "grpc_health_check": {},        # grpc.health.v1 Check of the whole server
        }]
    if len(ports) > 1:
        # Ejecting the only host would turn a blip into an outage, so only where there are more.
        cluster["outlier_detection"] = {
            "consecutive_gateway_failure": r.consecutive_gateway_failures,
            "enforcing_consecutive_gateway_failure": 100,
            "base_ejection_time": seconds(r.ejection_s),
            "max_ejection_percent": 50,     # always keep one of two instances
        }
    return cluster


def _plain_cluster(name: str, hosts: list[tuple[str, int]], *, http2: bool = True) -> dict:
    cluster = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "lb_policy": "ROUND_ROBIN",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": {"socket_address": {"address": host, "port_value": port}}}}
                for host, port in hosts
            ]}],
        },
    }
    if http2:
        # gRPC needs HTTP/2 upstream; without this Envoy speaks HTTP/1.1 and calls fail.
        cluster["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": HTTP2_WINDOWS},
            },
        }
    return cluster
