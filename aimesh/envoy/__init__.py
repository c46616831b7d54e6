"""The Envoy bootstrap, rendered from the one topology: listeners, routes, clusters, JWT check,
rate limits, retries, circuit breaking, outlier detection, health checks, grpc-web, JSON, tracing.

Two listeners built by one function share routes, JWT check and logs: the edge (clients) and the
east-west listener (service -> service, service -> Triton), so the mesh's policies hold inside
too. Only the east-west one routes to Triton, and it keeps the caller's x-request-id. Only the
edge limits rates (per user, per client address) and speaks grpc-web and JSON.

`render` gives the whole config with routes inline (what the tests and the golden file read);
`write` puts each listener's routes in a file of their own that Envoy watches (RDS from the
filesystem), so `apply_routes` changes canary weights and faults live, without a restart or a
dropped call. Both apply the state dir's run-time overrides (aimesh/overrides.py) on top.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import yaml

from aimesh import overrides, paths, traces
from aimesh.topology import Topology

from .clusters import all_clusters
from .common import (
    DESCRIPTOR_SET,
    LOOPBACK,
    OWN_CERTIFICATE,
    TRITON,
    TRUST,
    WEB_DIR,
    WEB_FILES,
    Addressing,
    socket_address,
)
from .filters import client_filters, rbac_filter
from .listeners import build_listener
from .routes import method_routes, web_routes
from .tls import CertFiles, Tls, sds_files

LOCAL_CERTS = CertFiles.local()
ON_LOOPBACK = Addressing()


def render(topo: Topology, *, access_log_path: str | None = None,
           descriptor_set: str = DESCRIPTOR_SET, web_dir: str = WEB_DIR,
           otlp_endpoint: str = "", certs: CertFiles = LOCAL_CERTS,
           addressing: Addressing = ON_LOOPBACK) -> dict:
    """The full bootstrap as a plain dict; the same arguments always give the same dict.
    `otlp_endpoint` (host:port of an OTLP gRPC collector) turns tracing on. With the topology's
    identity.mtls, Envoy's own certificate and the CA come by SDS (`certs`). `addressing`: where
    it listens and how it names upstreams (loopback here; names in containers)."""
    log = access_log_path or "/dev/stdout"
    tls = Tls(certs) if topo.identity.mtls else None
    listener: dict[str, Any] = {"topo": topo, "access_log_path": log, "tracing": bool(otlp_endpoint),
                "addressing": addressing}
    config = {
        # Routes read from files (see write) need the node named.
        "node": {"id": "aimesh", "cluster": "aimesh"},
        "admin": {"address": socket_address(topo.gateway.admin_port, addressing.listen)},
        # Runtime values set through the admin port (runtime_modify), e.g. tracing.random_sampling
        # to change the share of traced requests live.
        "layered_runtime": {"layers": [{"name": "admin", "admin_layer": {}}]},
        "overload_manager": {"resource_monitors": [{
            "name": "envoy.resource_monitors.global_downstream_max_connections",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.resource_monitors."
                                      "downstream_connections.v3.DownstreamConnectionsConfig",
                             "max_active_downstream_connections": topo.gateway.max_client_connections}}]},
        "static_resources": {
            "listeners": [
                build_listener("edge", topo.gateway.edge_port, web_routes(web_dir),
                          edge_filters=client_filters(topo, descriptor_set),
                          public_prefixes=(), public_paths=tuple(WEB_FILES),
                          trust_request_id=False, **listener),
                # Workers call Triton with no user, so Triton routes need no token; they exist
                # only here, never on the edge. Callers forward x-request-id, so keep it.
                build_listener("mesh", topo.gateway.mesh_port, method_routes(TRITON, topo, edge=False),
                          edge_filters=[rbac_filter(topo)] if tls else [],
                          public_prefixes=(f"/{TRITON.grpc_services[0]}/",),
                          token_optional=on_behalf_paths(topo) if tls else (),
                          trust_request_id=True, tls=tls, **listener),
            ],
            "clusters": all_clusters(topo, otlp_endpoint, tls, addressing),
        },
    }
    return config


def on_behalf_paths(topo: Topology) -> tuple[str, ...]:
    """The methods workloads call as themselves (identity.on_behalf), as request paths. Only with
    mTLS: the called service knows the workload by the certificate the gateway saw."""
    return tuple(sorted({f"/{grpc_service}/{method}"
                         for service in topo.services.values()
                         for method in topo.identity.agents(service.name)
                         for grpc_service in service.grpc_services}))


def write(topo: Topology, state_dir: Path) -> Path:
    """Render into the state directory (access log beside the other logs, each listener's routes
    in a watched file of their own); return the bootstrap file. Tracing is on while this mesh's
    Phoenix runs, or when the environment names an OTLP collector (OTEL_EXPORTER_OTLP_ENDPOINT)."""
    config = _render_for(topo, state_dir)
    envoy_dir = Path(state_dir) / "envoy"
    envoy_dir.mkdir(parents=True, exist_ok=True)
    for listener in config["static_resources"]["listeners"]:
        hcm = _hcm(listener)
        _replace(_routes_path(state_dir, listener["name"]), _route_discovery(hcm.pop("route_config")))
        hcm["rds"] = {"route_config_name": listener["name"], "config_source": {
            "resource_api_version": "V3",
            "path_config_source": {"path": str(_routes_path(state_dir, listener["name"]))}}}
    if topo.identity.mtls:
        certs_dir = _certs_dir(state_dir)
        certs_dir.mkdir(parents=True, exist_ok=True)
        for name, secret in sds_files(CertFiles.local(str(certs_dir))).items():
            _replace(certs_dir / name, secret)
    path = envoy_dir / "envoy.yaml"
    _replace(path, config)
    return path


def apply_routes(topo: Topology, state_dir: Path) -> bool:
    """Replace the running Envoy's routes with the topology's (weights, timeouts, limits) in
    place. False when something beyond routes changed (listeners, clusters): that needs a
    restart, and nothing is written."""
    config = _render_for(topo, state_dir)
    bootstrap = yaml.safe_load((Path(state_dir) / "envoy" / "envoy.yaml").read_text())
    routes = {}
    for listener in config["static_resources"]["listeners"]:
        routes[listener["name"]] = _hcm(listener).pop("route_config")
        _hcm(listener)["rds"] = _hcm(_find(bootstrap, listener["name"]))["rds"]
    if config != bootstrap:
        return False
    for name, route_config in routes.items():
        _replace(_routes_path(state_dir, name), _route_discovery(route_config))
    return True


def validate(path: Path) -> None:
    """Let Envoy itself check the file (schema, references, extensions) without serving."""
    result = subprocess.run(
        [paths.venv_bin("envoy"), "--mode", "validate", "-c", str(path), "--log-level", "warn"],
        capture_output=True, text=True, timeout=60,
    )
    if result.returncode != 0:
        raise RuntimeError(f"envoy rejected {path}:\n{result.stdout}{result.stderr}")


def _render_for(topo: Topology, state_dir: Path) -> dict:
    logs = Path(state_dir) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    endpoint = traces.exporting_to(topo.infra, state_dir)
    topo = overrides.load(state_dir).on(topo)    # faults and canary weights set at run time
    return render(topo, access_log_path=str(logs / "envoy-access.log"),
                  descriptor_set=str(paths.DESCRIPTOR_SET), web_dir=str(paths.WEB_DIST),
                  otlp_endpoint=endpoint.removeprefix("http://").removeprefix("https://"),
                  certs=CertFiles.local(str(_certs_dir(state_dir))))


def _certs_dir(state_dir: Path) -> Path:
    from aimesh.certs import Authority
    return Authority(state_dir).dir


def _routes_path(state_dir: Path, listener: str) -> Path:
    return Path(state_dir) / "envoy" / f"routes-{listener}.yaml"


def _route_discovery(route_config: dict) -> dict:
    """A route config as the discovery response Envoy reads from a watched file."""
    return {"resources": [{"@type": "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
                           **route_config}]}


def _replace(path: Path, content: dict) -> None:
    """Write beside, then rename over: Envoy (watching the file) never reads half a file."""
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(yaml.safe_dump(content, sort_keys=False))
    os.replace(partial, path)


def _hcm(listener: dict) -> dict:
    return listener["filter_chains"][0]["filters"][0]["typed_config"]


def _find(config: dict, listener: str) -> dict:
    return next(entry for entry in config["static_resources"]["listeners"] if entry["name"] == listener)


__all__ = ["Addressing", "CertFiles", "LOOPBACK", "OWN_CERTIFICATE", "TRUST", "WEB_DIR", "WEB_FILES", "apply_routes",
           "render", "sds_files", "validate", "write"]
