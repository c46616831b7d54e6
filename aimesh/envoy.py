"""The Envoy bootstrap, rendered from the one topology: listeners, routes, clusters, JWT check.

Two listeners built by one function share routes, JWT check and logs: the edge (clients) and the
east-west listener (service -> service, service -> Triton), so the mesh's policies hold inside
too. Only the east-west one routes to Triton, and it keeps the caller's x-request-id.
"""
from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from aimesh import paths
from aimesh.topology import Service, Topology

LOOPBACK = "127.0.0.1"
JWT_PROVIDER = "user"                      # user-svc issues every token
JWKS_CLUSTER = "jwks"
JWKS_PATH = "/.well-known/jwks.json"
JWKS_CACHE_S = 300                         # rotation publishes the new key first, so 5 min is safe
PIN_HEADER = "x-model-version"             # pins one version of a canary service
IDENTITY_HEADERS = {"sub": "x-aimesh-user-id", "tier": "x-aimesh-tier", "role": "x-aimesh-role"}

TRITON_CLUSTER = "triton"
TRITON_SERVICE = "inference.GRPCInferenceService"
TRITON_STREAMS = ("ModelStreamInfer",)     # decoupled models (chat_lm) stream tokens
TRITON_TIMEOUT_S = 10                      # callers set tighter deadlines; this only bounds a hang


def render(topo: Topology, *, access_log_path: str | None = None) -> dict:
    """The full bootstrap as a plain dict; the same topology always gives the same dict."""
    log = access_log_path or "/dev/stdout"
    triton_routes = _routes(TRITON_SERVICE, {"cluster": TRITON_CLUSTER}, name="triton",
                            timeout_s=TRITON_TIMEOUT_S, streams=TRITON_STREAMS,
                            idle_timeout_s=topo.gateway.stream_idle_timeout_s)
    return {
        "admin": {"address": _address(topo.gateway.admin_port)},
        "static_resources": {
            "listeners": [
                _listener("edge", topo.gateway.edge_port, topo, [], log,
                          public_prefixes=(), trust_request_id=False),
                # Workers call Triton with no user, so Triton routes need no token; they exist
                # only here, never on the edge. Callers forward x-request-id, so keep it.
                _listener("mesh", topo.gateway.mesh_port, topo, triton_routes, log,
                          public_prefixes=(f"/{TRITON_SERVICE}/",), trust_request_id=True),
            ],
            "clusters": _clusters(topo),
        },
    }


def write(topo: Topology, state_dir: Path) -> Path:
    """Render into the state directory (access log beside the other logs); return the file."""
    logs = Path(state_dir) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    path = Path(state_dir) / "envoy" / "envoy.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    config = render(topo, access_log_path=str(logs / "envoy-access.log"))
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def validate(path: Path) -> None:
    """Let Envoy itself check the file (schema, references, extensions) without serving."""
    result = subprocess.run(
        [paths.venv_bin("envoy"), "--mode", "validate", "-c", str(path), "--log-level", "warn"],
        capture_output=True, text=True, timeout=60,
    )
    if result.returncode != 0:
        raise RuntimeError(f"envoy rejected {path}:\n{result.stdout}{result.stderr}")


# --- listeners ------------------------------------------------------------------------------

def _listener(name: str, port: int, topo: Topology, extra_routes: list[dict],
              access_log_path: str, *, public_prefixes: tuple[str, ...],
              trust_request_id: bool) -> dict:
    """A listener with every service's routes (built afresh, so the YAML has no aliases) after
    its own extra routes, and the one filter chain."""
    routes = extra_routes + [r for s in topo.services.values() for r in _service_routes(s, topo)]
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager"
                 ".v3.HttpConnectionManager",
        "stat_prefix": name,
        "codec_type": "AUTO",                       # gRPC clients speak h2c; AUTO detects it
        "generate_request_id": True,
        # The edge is the trust boundary: with the peer address as the client's, Envoy treats the
        # call as external and replaces a client-chosen x-request-id (without it, it keeps it).
        # East-west callers forward the user's x-request-id, which must survive.
        "use_remote_address": not trust_request_id,
        "preserve_external_request_id": trust_request_id,
        "stream_idle_timeout": _seconds(topo.gateway.stream_idle_timeout_s),
        "access_log": [_access_log(name, access_log_path)],
        "route_config": {
            "name": name,
            "virtual_hosts": [{"name": name, "domains": ["*"], "routes": routes}],
        },
        "http_filters": _http_filters(topo, public_prefixes),
    }
    return {
        "name": name,
        "address": _address(port),
        "filter_chains": [{"filters": [
            {"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm},
        ]}],
    }


def _http_filters(topo: Topology, public_prefixes: tuple[str, ...]) -> list[dict]:
    # Order matters: strip forged identity, then verify the token and write the real identity,
    # then route. New filters (grpc_web, cors, rate limits) slot in before the router.
    return [_strip_identity_filter(), _jwt_filter(topo, public_prefixes), _router_filter()]


def _strip_identity_filter() -> dict:
    # A route's request_headers_to_remove runs in the router, i.e. AFTER jwt_authn, and would
    # erase the verified headers too; this filter removes the client's copies before the check.
    return {
        "name": "envoy.filters.http.header_mutation",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3"
                     ".HeaderMutation",
            "mutations": {"request_mutations": [{"remove": h} for h in IDENTITY_HEADERS.values()]},
        },
    }


def _jwt_filter(topo: Topology, public_prefixes: tuple[str, ...]) -> dict:
    issuer = _issuer_service(topo)
    provider = {
        "issuer": topo.gateway.issuer,
        "audiences": [topo.gateway.audience],
        "remote_jwks": {
            "http_uri": {
                "uri": f"http://{LOOPBACK}:{issuer.jwks_port}{JWKS_PATH}",
                "cluster": JWKS_CLUSTER,
                "timeout": "2s",
            },
            "cache_duration": _seconds(JWKS_CACHE_S),
            # Fetch in the background: the listener opens even while user-svc is still starting,
            # and a failed fetch is retried (failed_refetch_duration) instead of waiting a cache.
            "async_fetch": {"fast_listener": True, "failed_refetch_duration": "1s"},
        },
        "forward": True,                  # services forward the token on east-west calls
        "claim_to_headers": [{"header_name": h, "claim_name": c} for c, h in IDENTITY_HEADERS.items()],
    }
    # First matching rule wins: public paths have no requirement, everything else needs a token.
    rules = [{"match": match} for match in _public_matches(topo)]
    rules += [{"match": {"prefix": p}} for p in public_prefixes]
    rules.append({"match": {"prefix": "/"}, "requires": {"provider_name": JWT_PROVIDER}})
    return {
        "name": "envoy.filters.http.jwt_authn",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
            "providers": {JWT_PROVIDER: provider},
            "rules": rules,
        },
    }


def _public_matches(topo: Topology) -> list[dict]:
    matches = []
    for service in topo.services.values():
        for grpc_service in service.grpc_services:
            if "*" in service.public:
                matches.append({"prefix": f"/{grpc_service}/"})
            else:
                matches += [{"path": f"/{grpc_service}/{m}"} for m in service.public]
    return matches


def _router_filter() -> dict:
    return {
        "name": "envoy.filters.http.router",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
    }


def _access_log(listener: str, path: str) -> dict:
    # One JSON object per call; GRPC_STATUS reads grpc-status from headers or trailers.
    fields = {
        "time": "%START_TIME%",
        "listener": listener,
        "request_id": "%REQ(X-REQUEST-ID)%",
        "traceparent": "%REQ(TRACEPARENT)%",
        "method": "%REQ(:METHOD)%",
        "path": "%REQ(:PATH)%",
        "route": "%ROUTE_NAME%",
        "user_id": "%REQ(X-AIMESH-USER-ID)%",
        "upstream_cluster": "%UPSTREAM_CLUSTER%",
        "upstream_host": "%UPSTREAM_HOST%",
        "grpc_status": "%GRPC_STATUS(NUMBER)%",
        "response_code": "%RESPONSE_CODE%",
        "response_flags": "%RESPONSE_FLAGS%",
        "duration_ms": "%DURATION%",
    }
    return {
        "name": "envoy.access_loggers.file",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
            "path": path,
            "log_format": {"json_format": fields},
        },
    }


# --- routes ---------------------------------------------------------------------------------

def _service_routes(service: Service, topo: Topology) -> list[dict]:
    policy = {"timeout_s": service.timeout_s, "streams": service.streams,
              "idle_timeout_s": topo.gateway.stream_idle_timeout_s}
    routes = []
    for grpc_service in service.grpc_services:
        # A pinned version must match before the weighted split, so its routes come first.
        for version, cluster in _pins(service):
            pin = {"name": PIN_HEADER, "string_match": {"exact": version}}
            routes += _routes(grpc_service, {"cluster": cluster}, headers=(pin,),
                              name=f"{service.name}-{version}", **policy)
        routes += _routes(grpc_service, _target(service), name=service.name, **policy)
    return routes


def _routes(grpc_service: str, target: dict, *, name: str, timeout_s: float,
            streams: tuple[str, ...], idle_timeout_s: float,
            headers: tuple[dict, ...] = ()) -> list[dict]:
    """The routes of one gRPC service to one target (a cluster or a weighted split): stream
    methods first (exact paths), then the rest of the service by prefix."""
    routes = []
    for method in streams:
        # A stream lives as long as the conversation: no route timeout, only an idle bound.
        routes.append(_route(f"{name}-{method}", {"path": f"/{grpc_service}/{method}"}, headers,
                             {**target, "timeout": "0s", "idle_timeout": _seconds(idle_timeout_s)}))
    routes.append(_route(name, {"prefix": f"/{grpc_service}/"}, headers,
                         {**target, "timeout": _seconds(timeout_s)}))
    return routes


def _route(name: str, match: dict, headers: tuple[dict, ...], action: dict) -> dict:
    if headers:
        match = {**match, "headers": list(headers)}
    return {"name": name, "match": match, "route": action}


def _pins(service: Service) -> list[tuple[str, str]]:
    """(version, cluster) for each version of a canary service; none for a plain service."""
    return [(i.version, _version_cluster(service, i.version)) for i in service.instances if i.version]


def _target(service: Service) -> dict:
    """A canary service splits by the topology's weights; a plain one is a single cluster."""
    if not _pins(service):
        return {"cluster": _cluster_name(service)}
    split = [{"name": _version_cluster(service, i.version), "weight": i.weight}
             for i in service.instances if i.version]
    return {"weighted_clusters": {"clusters": split}}


# --- clusters -------------------------------------------------------------------------------

def _clusters(topo: Topology) -> list[dict]:
    clusters = []
    for service in topo.services.values():
        if _pins(service):
            clusters += [_cluster(_version_cluster(service, i.version), [i.port])
                         for i in service.instances if i.version]
        else:
            clusters.append(_cluster(_cluster_name(service), [i.port for i in service.instances]))
    clusters.append(_cluster(TRITON_CLUSTER, [topo.infra.triton_grpc_port]))
    clusters.append(_cluster(JWKS_CLUSTER, [_issuer_service(topo).jwks_port], http2=False))
    return clusters


def _cluster(name: str, ports: list[int], *, http2: bool = True) -> dict:
    cluster = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "lb_policy": "ROUND_ROBIN",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": _address(port)}} for port in ports
            ]}],
        },
    }
    if http2:
        # gRPC needs HTTP/2 upstream; without this Envoy speaks HTTP/1.1 and calls fail.
        cluster["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            },
        }
    return cluster


def _cluster_name(service: Service) -> str:
    return service.name


def _version_cluster(service: Service, version: str) -> str:
    return f"{service.name}-{version}"


# --- small pieces ---------------------------------------------------------------------------

def _issuer_service(topo: Topology) -> Service:
    """The one service that serves the JWKS (user-svc)."""
    issuers = [s for s in topo.services.values() if s.jwks_port]
    if len(issuers) != 1:
        raise ValueError(f"exactly one service must have a jwks_port, found {len(issuers)}")
    return issuers[0]


def _address(port: int) -> dict:
    return {"socket_address": {"address": LOOPBACK, "port_value": port}}


def _seconds(value: float) -> str:
    return f"{value:g}s"
