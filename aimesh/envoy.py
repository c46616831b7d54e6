"""The Envoy bootstrap, rendered from the one topology: listeners, routes, clusters, JWT check,
rate limits, retries, circuit breaking, outlier detection, health checks, grpc-web, JSON, tracing.

Two listeners built by one function share routes, JWT check and logs: the edge (clients) and the
east-west listener (service -> service, service -> Triton), so the mesh's policies hold inside
too. Only the east-west one routes to Triton, and it keeps the caller's x-request-id. Only the
edge limits rates (per user, per client address) and speaks grpc-web and JSON.

`render` gives the whole config with routes inline (what the tests and the golden file read);
`write` puts each listener's routes in a file of their own that Envoy watches (RDS from the
filesystem), so `apply_routes` changes canary weights live, without a restart or a dropped call.
"""
from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import yaml

from aimesh import paths
from aimesh.topology import TRITON as TRITON_NAME, RateLimit, Service, Topology
from services.kit.tls import GATEWAY, dns_name, spiffe_id

LOOPBACK = "127.0.0.1"
JWT_PROVIDER = "user"                      # user-svc issues every token
JWKS_CLUSTER = "jwks"
JWKS_PATH = "/.well-known/jwks.json"
PIN_HEADER = "x-model-version"             # pins one version of a canary service
IDENTITY_HEADERS = {"sub": "x-aimesh-user-id", "tier": "x-aimesh-tier", "role": "x-aimesh-role"}
DESCRIPTOR_SET = "gen/aimesh.binpb"        # for JSON transcoding; relative to the repository
WEB_DIR = "web/dist"                       # the built page (`aimesh web`); relative to the repository
# The page's files, served by the edge itself (one front door, one origin): path -> (file, type).
WEB_FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/web/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/web/app.css": ("app.css", "text/css; charset=utf-8"),
}
MAX_WEB_FILE_BYTES = 4 * 1024 * 1024       # Envoy's default cap on a direct response is 4 KiB

# Triton is routed like a service of the topology: its streams have no route timeout, and
# inference has no side effects, so every call may be retried.
TRITON = Service(name="triton", grpc_services=("inference.GRPCInferenceService",), instances=(),
                 timeout_s=10,             # callers set tighter deadlines; this only bounds a hang
                 streams=("ModelStreamInfer",), idempotent=("*",))
OTLP_CLUSTER = "otlp"                      # where spans go, when an OTLP endpoint is configured
OWN_CERTIFICATE = "gateway"                # SDS secret names
TRUST = "trust"
RBAC_FILTER = "envoy.filters.http.rbac"
# CEL: the connection failed in TLS (no certificate, an unknown CA, expired); the listener's log
# would otherwise have a line for every connection.
HANDSHAKE_FAILED = "connection.transport_failure_reason != ''"      # CEL: the client presented no certificate that verified

# Retry only what never produced an answer: a refused connection, a reset, or UNAVAILABLE.
# RESOURCE_EXHAUSTED (a rate limit) is deliberately absent.
RETRY_ON = "unavailable,reset,connect-failure"
RATE_LIMIT_FILTER = "envoy.filters.http.local_ratelimit"
CORS_FILTER = "envoy.filters.http.cors"
MAX_USERS_TRACKED = 10000                  # per-user buckets kept per route (least recently used go)
RATE_LIMITED_MESSAGE = "local_rate_limited"   # Envoy's grpc-message for a limited call
RESOURCE_EXHAUSTED = "8"                        # the gRPC status code, as a grpc-status header
GRPC_WEB_HEADERS = "authorization,content-type,x-grpc-web,x-user-agent,grpc-timeout,x-model-version"


@dataclass(frozen=True)
class CertFiles:
    """Where Envoy reads its certificate, key and the mesh's CA (a folder it watches: a renewal
    replaces files there), and where its two SDS files are."""
    folder: str
    certificate: str
    private_key: str
    trust: str
    sds_folder: str

    @classmethod
    def local(cls, folder: str = "certs") -> "CertFiles":
        """The runner's: <state>/certs, the gateway's bundle (key and certificate in one file)."""
        return cls(folder, f"{OWN_CERTIFICATE}.pem", f"{OWN_CERTIFICATE}.pem", "ca.pem", folder)

    @classmethod
    def mounted(cls, folder: str, sds_folder: str) -> "CertFiles":
        """A deployment's: a mounted Secret in cert-manager's layout."""
        return cls(folder, "tls.crt", "tls.key", "ca.crt", sds_folder)


def render(topo: Topology, *, access_log_path: str | None = None,
           descriptor_set: str = DESCRIPTOR_SET, web_dir: str = WEB_DIR,
           otlp_endpoint: str = "", certs: CertFiles = CertFiles.local()) -> dict:
    """The full bootstrap as a plain dict; the same arguments always give the same dict.
    `otlp_endpoint` (host:port of an OTLP gRPC collector) turns tracing on. With the topology's
    identity.mtls, Envoy's own certificate and the CA come by SDS (`certs`)."""
    log = access_log_path or "/dev/stdout"
    tls = _Tls(certs) if topo.identity.mtls else None
    listener = {"topo": topo, "access_log_path": log, "tracing": bool(otlp_endpoint)}
    config = {
        # Routes read from files (see write) need the node named.
        "node": {"id": "aimesh", "cluster": "aimesh"},
        "admin": {"address": _address(topo.gateway.admin_port)},
        "static_resources": {
            "listeners": [
                _listener("edge", topo.gateway.edge_port, _web_routes(web_dir),
                          edge_filters=_edge_filters(topo, descriptor_set),
                          public_prefixes=(), public_paths=tuple(WEB_FILES),
                          trust_request_id=False, **listener),
                # Workers call Triton with no user, so Triton routes need no token; they exist
                # only here, never on the edge. Callers forward x-request-id, so keep it.
                _listener("mesh", topo.gateway.mesh_port, _method_routes(TRITON, topo, edge=False),
                          edge_filters=[_rbac_filter(topo)] if tls else [],
                          public_prefixes=(f"/{TRITON.grpc_services[0]}/",),
                          trust_request_id=True, tls=tls, **listener),
            ],
            "clusters": _clusters(topo, otlp_endpoint, tls),
        },
    }
    return config


def write(topo: Topology, state_dir: Path) -> Path:
    """Render into the state directory (access log beside the other logs, each listener's routes
    in a watched file of their own); return the bootstrap file. Tracing is on when the
    environment names an OTLP collector (OTEL_EXPORTER_OTLP_ENDPOINT, as for the services)."""
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
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "")
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


# --- listeners ------------------------------------------------------------------------------

def _listener(name: str, port: int, extra_routes: list[dict], *, topo: Topology,
              access_log_path: str, tracing: bool, edge_filters: list[dict],
              public_prefixes: tuple[str, ...], trust_request_id: bool,
              public_paths: tuple[str, ...] = (), tls: "_Tls | None" = None) -> dict:
    """A listener with every service's routes (built afresh, so the YAML has no aliases) after
    its own extra routes, and the one filter chain."""
    edge = name == "edge"
    routes = extra_routes + [r for s in topo.services.values() for r in _method_routes(s, topo, edge=edge)]
    virtual_host = {"name": name, "domains": ["*"], "routes": routes}
    route_config = {"name": name, "virtual_hosts": [virtual_host]}
    if edge:
        virtual_host["typed_per_filter_config"] = {CORS_FILTER: _cors_policy(topo)}
        route_config["max_direct_response_body_size_bytes"] = MAX_WEB_FILE_BYTES
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
        "route_config": route_config,
        "http_filters": [*edge_filters, *_http_filters(topo, public_prefixes, public_paths)],
    }
    if edge:
        hcm["local_reply_config"] = _grpc_web_local_replies()
    if tracing:
        hcm["tracing"] = _tracing(name)
    chain = {"filters": [{"name": "envoy.filters.network.http_connection_manager",
                          "typed_config": hcm}]}
    listener = {"name": name, "address": _address(port), "filter_chains": [chain]}
    if tls:
        chain["transport_socket"] = tls.downstream()
        # One line per refused connection (no certificate, unknown CA, expired), naming the peer.
        listener["access_log"] = [_handshake_log(name, access_log_path)]
    return listener


def _handshake_log(listener: str, path: str) -> dict:
    """A log line for each connection refused at the handshake, naming the peer (its address,
    and the SPIFFE id its certificate claims, if it sent one) and the reason."""
    fields = {"time": "%START_TIME%", "listener": listener, "event": "tls handshake failed",
              "peer": "%DOWNSTREAM_REMOTE_ADDRESS%", "peer_id": "%DOWNSTREAM_PEER_URI_SAN%",
              "reason": "%DOWNSTREAM_TRANSPORT_FAILURE_REASON%"}
    return {
        "name": "envoy.access_loggers.file",
        "filter": {"extension_filter": {"name": "envoy.access_loggers.extension_filters.cel",
                                        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.filters.cel.v3"
                     ".ExpressionFilter",
            "expression": HANDSHAKE_FAILED}}},
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
            "path": path, "log_format": {"json_format": fields}},
    }


class _Tls:
    """Envoy's side of workload identity: its own certificate and the CA by file-based SDS (Envoy
    reloads them when a file in the watched certificates folder is replaced)."""

    def __init__(self, files: CertFiles):
        self.files = files

    def _sds(self, name: str) -> dict:
        return {"name": name, "sds_config": {"resource_api_version": "V3", "path_config_source": {
            "path": f"{self.files.sds_folder}/envoy-{name}.yaml",
            "watched_directory": {"path": self.files.folder}}}}

    def secrets(self) -> dict[str, dict]:
        """The SDS files: file name -> discovery response."""
        f = self.files
        own = {"name": OWN_CERTIFICATE, "tls_certificate": {
            "certificate_chain": {"filename": f"{f.folder}/{f.certificate}"},
            "private_key": {"filename": f"{f.folder}/{f.private_key}"}}}
        trust = {"name": TRUST, "validation_context": {
            "trusted_ca": {"filename": f"{f.folder}/{f.trust}"}}}
        secret = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
        return {f"envoy-{s['name']}.yaml": {"resources": [{"@type": secret, **s}]}
                for s in (own, trust)}

    def _common(self, alpn: list[str], peers: list[str] | None) -> dict:
        validation: dict = {}
        if peers:
            validation["match_typed_subject_alt_names"] = [
                {"san_type": "URI", "matcher": {"exact": spiffe_id(p)}} for p in peers]
        return {
            "tls_params": {"tls_minimum_protocol_version": "TLSv1_3",
                           "tls_maximum_protocol_version": "TLSv1_3"},
            "alpn_protocols": alpn,
            "tls_certificate_sds_secret_configs": [self._sds(OWN_CERTIFICATE)],
            "combined_validation_context": {
                "default_validation_context": validation,
                "validation_context_sds_secret_config": self._sds(TRUST)},
        }

    def downstream(self) -> dict:
        """The east-west listener: a client certificate of the mesh's CA is required."""
        return {"name": "envoy.transport_sockets.tls", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3"
                     ".DownstreamTlsContext",
            "require_client_certificate": True,
            "common_tls_context": self._common(["h2"], None)}}

    def upstream(self, workload: str, *, http2: bool = True) -> dict:
        """To a service: present the gateway's certificate, accept only `workload`'s."""
        return {"name": "envoy.transport_sockets.tls", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3"
                     ".UpstreamTlsContext",
            "sni": dns_name(workload),
            "common_tls_context": self._common(["h2"] if http2 else ["http/1.1"], [workload])}}


def sds_files(certs: CertFiles) -> dict[str, dict]:
    """The SDS files the rendered config reads (name in certs.sds_folder -> content)."""
    return _Tls(certs).secrets()


def _rbac_filter(topo: Topology) -> dict:
    """The east-west allow list (identity.calls): a call is let through only when the caller's
    certificate names a workload allowed that service or method. Everything else is 403, which
    gRPC clients read as PERMISSION_DENIED."""
    policies = {}
    for caller, allowed in topo.identity.calls.items():
        paths = []
        for entry in allowed:
            service, _, method = entry.partition(".")
            grpc_services = (TRITON.grpc_services if service == TRITON_NAME
                             else topo.services[service].grpc_services)
            for grpc_service in grpc_services:
                paths.append({"url_path": {"path": {"exact": f"/{grpc_service}/{method}"}
                                           if method else {"prefix": f"/{grpc_service}/"}}})
        policies[caller] = {
            "permissions": [{"or_rules": {"rules": paths}}],
            "principals": [{"authenticated": {"principal_name": {"exact": spiffe_id(caller)}}}]}
    return {"name": RBAC_FILTER, "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
        "rules": {"action": "ALLOW", "policies": policies}}}


def _edge_filters(topo: Topology, descriptor_set: str) -> list[dict]:
    """Browsers and JSON clients become gRPC calls first, so identity, limits and routes treat
    every call alike: CORS answers the page's preflight, grpc_web unwraps its framing, the
    transcoder turns `POST /v1/search` into SearchService/Search (the google.api.http map)."""
    services = [n for s in topo.services.values() for n in s.grpc_services if n.startswith("aimesh.")]
    return [
        {"name": CORS_FILTER, "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"}},
        {"name": "envoy.filters.http.grpc_web", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.grpc_web.v3.GrpcWeb"}},
        {"name": "envoy.filters.http.grpc_json_transcoder", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.grpc_json_transcoder.v3"
                     ".GrpcJsonTranscoder",
            "proto_descriptor": descriptor_set,
            "services": services,
            "convert_grpc_status": True,          # a gRPC error becomes an HTTP status + JSON body
            "print_options": {"always_print_primitive_fields": True},
        }},
    ]


def _grpc_web_local_replies() -> dict:
    """A rate-limited grpc-web call reads RESOURCE_EXHAUSTED, as over gRPC. Envoy decides whether
    a local reply is gRPC from the request as it arrived, and grpc-web is not gRPC there: the
    limiter's reply goes out as HTTP 429, which the grpc_web filter then turns into UNAVAILABLE
    (gRPC's HTTP mapping). So a 429 to a grpc-web client (they all send x-grpc-web) is rewritten
    here into what the grpc_web filter passes through untouched: a trailers-only grpc-web reply."""
    rate_limited = {"status_code_filter": {"comparison": {"op": "EQ", "value": {
        "default_value": 429, "runtime_key": "local_reply.rate_limited_status"}}}}
    grpc_web_client = {"header_filter": {"header": {"name": "x-grpc-web", "present_match": True}}}
    trailers = {"grpc-status": RESOURCE_EXHAUSTED,
                "grpc-message": RATE_LIMITED_MESSAGE}
    return {"mappers": [{
        "filter": {"and_filter": {"filters": [rate_limited, grpc_web_client]}},
        "status_code": 200,
        "headers_to_add": [{"header": {"key": k, "value": v},
                            "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"} for k, v in trailers.items()],
        # No body, so the headers end the reply: grpc-web's trailers-only form.
        "body_format_override": {"text_format": "", "content_type": "application/grpc-web+proto"},
    }]}


def _cors_policy(topo: Topology) -> dict:
    return {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy",
        "allow_origin_string_match": [{"exact": topo.gateway.web_origin}],
        "allow_methods": "POST, GET, OPTIONS",
        "allow_headers": GRPC_WEB_HEADERS,
        "expose_headers": "grpc-status,grpc-message",
        "max_age": "600",
    }


def _http_filters(topo: Topology, public_prefixes: tuple[str, ...],
                  public_paths: tuple[str, ...]) -> list[dict]:
    # Order matters: strip forged identity, then verify the token and write the real identity,
    # then count the call against the user's limit (it reads that identity), then route.
    return [_strip_identity_filter(), _jwt_filter(topo, public_prefixes, public_paths),
            _rate_limit_filter(),
            _router_filter()]


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


def _jwt_filter(topo: Topology, public_prefixes: tuple[str, ...],
                public_paths: tuple[str, ...]) -> dict:
    issuer = _issuer_service(topo)
    provider = {
        "issuer": topo.gateway.issuer,
        "audiences": [topo.gateway.audience],
        "remote_jwks": {
            "http_uri": {
                "uri": f"{'https' if topo.identity.mtls else 'http'}://{LOOPBACK}:{issuer.jwks_port}"
                       f"{JWKS_PATH}",
                "cluster": JWKS_CLUSTER,
                "timeout": "2s",
            },
            # user-svc signs with a new key only once this much time has passed since publishing it
            "cache_duration": _seconds(topo.gateway.jwks_cache_s),
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
    rules += [{"match": {"path": p}} for p in public_paths]
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


def _rate_limit_filter() -> dict:
    # Present on the listener but inert: each limited route carries its own buckets.
    return {"name": RATE_LIMIT_FILTER, "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
        "stat_prefix": "rate_limit"}}


def _router_filter() -> dict:
    return {
        "name": "envoy.filters.http.router",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
    }


def _tracing(listener: str) -> dict:
    # Envoy starts (or continues) the trace and passes `traceparent` on, so the services'
    # spans join the same trace.
    return {"provider": {"name": "envoy.tracers.opentelemetry", "typed_config": {
        "@type": "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig",
        "grpc_service": {"envoy_grpc": {"cluster_name": OTLP_CLUSTER}, "timeout": "1s"},
        "service_name": f"envoy-{listener}",
    }}}


def _access_log(listener: str, path: str) -> dict:
    # One JSON object per call; GRPC_STATUS reads grpc-status from headers or trailers.
    fields = {
        "time": "%START_TIME%",
        "listener": listener,
        "request_id": "%REQ(X-REQUEST-ID)%",
        "traceparent": "%REQ(TRACEPARENT)%",
        "trace_id": "%TRACE_ID%",
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

def _web_routes(web_dir: str) -> list[dict]:
    """The page and its two files, read by Envoy when it loads the routes (so a rebuilt page is
    served after `aimesh apply` or a restart). no-cache: the browser revalidates every load."""
    return [{
        "name": f"web-{file}",
        "match": {"path": path, "headers": [{"name": ":method", "string_match": {"exact": "GET"}}]},
        "direct_response": {"status": 200, "body": {"filename": f"{web_dir}/{file}"}},
        "response_headers_to_add": [
            {"header": {"key": "content-type", "value": content_type},
             "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"},
            {"header": {"key": "cache-control", "value": "no-cache"}}],
    } for path, (file, content_type) in WEB_FILES.items()]


def _method_routes(service: Service, topo: Topology, *, edge: bool) -> list[dict]:
    """Every route of a service: for each of its gRPC services, pinned versions first (they
    must match before the weighted split), then the split or the single cluster."""
    routes = []
    for grpc_service in service.grpc_services:
        for version, cluster in _pins(service):
            pin = {"name": PIN_HEADER, "string_match": {"exact": version}}
            routes += _routes(service, grpc_service, {"cluster": cluster}, topo, edge=edge,
                              name=f"{service.name}-{version}", headers=(pin,))
        routes += _routes(service, grpc_service, _target(service), topo, edge=edge, name=service.name)
    return routes


def _routes(service: Service, grpc_service: str, target: dict, topo: Topology, *, edge: bool,
            name: str, headers: tuple[dict, ...] = ()) -> list[dict]:
    """Methods with a policy of their own (stream, public, idempotent) get an exact route; the
    rest of the gRPC service shares one prefix route."""
    named = [m for m in dict.fromkeys((*service.streams, *service.public, *service.idempotent))
             if m != "*"]
    routes = [_route(f"{name}-{m}", {"path": f"/{grpc_service}/{m}"}, headers,
                     *_policy(service, m, target, topo, edge=edge)) for m in named]
    routes.append(_route(name, {"prefix": f"/{grpc_service}/"}, headers,
                         *_policy(service, "*", target, topo, edge=edge)))
    return routes


def _policy(service: Service, method: str, target: dict, topo: Topology, *,
            edge: bool) -> tuple[dict, dict]:
    """(route action, per-route filter configs) for a method ("*": any method not named)."""
    stream = method in service.streams
    public = method in service.public or "*" in service.public
    idempotent = method in service.idempotent or "*" in service.idempotent
    if stream:
        # A stream lives as long as the conversation: no route timeout, only an idle bound;
        # and it is never retried (part of it may have been answered).
        action = {**target, "timeout": "0s",
                  "idle_timeout": _seconds(topo.gateway.stream_idle_timeout_s)}
    else:
        action = {**target, "timeout": _seconds(service.timeout_s)}
        if idempotent:
            action["retry_policy"] = _retry_policy(topo)
    filters = {}
    if edge and (public or service.rate_limit):
        limit, descriptors = _per_address(topo) if public else _per_user(service.rate_limit)
        action["rate_limits"] = [{"actions": descriptors}]
        filters[RATE_LIMIT_FILTER] = limit
    return action, filters


def _retry_policy(topo: Topology) -> dict:
    return {
        "retry_on": RETRY_ON,
        "num_retries": topo.gateway.resilience.retries,
        # Try another host: the one that failed is likely still down.
        "retry_host_predicate": [{"name": "envoy.retry_host_predicates.previous_hosts", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3"
                     ".PreviousHostsPredicate"}}],
        "host_selection_retry_max_attempts": 3,
    }


def _per_user(limit: RateLimit) -> tuple[dict, list[dict]]:
    """A bucket per user and tier: each distinct user id (written by jwt_authn from the token's
    `sub`) gets its own bucket, sized by the token's tier."""
    descriptors = [{"entries": [{"key": "tier", "value": tier}, {"key": "user"}],
                    "token_bucket": _per_minute(per_minute)}
                   for tier, per_minute in (("free", limit.free), ("pro", limit.pro))]
    actions = [{"request_headers": {"header_name": IDENTITY_HEADERS["tier"], "descriptor_key": "tier"}},
               {"request_headers": {"header_name": IDENTITY_HEADERS["sub"], "descriptor_key": "user"}}]
    return _local_rate_limit(limit.free, descriptors), actions


def _per_address(topo: Topology) -> tuple[dict, list[dict]]:
    """A bucket per client address, for calls with no user (Login, Register)."""
    per_minute = topo.gateway.public_rate_limit_per_minute
    descriptors = [{"entries": [{"key": "remote_address"}], "token_bucket": _per_minute(per_minute)}]
    return _local_rate_limit(per_minute, descriptors), [{"remote_address": {}}]


def _local_rate_limit(fallback_per_minute: int, descriptors: list[dict]) -> dict:
    everyone = {"default_value": {"numerator": 100, "denominator": "HUNDRED"}}
    return {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
        "stat_prefix": "rate_limit",
        # Used only by a call that matches no descriptor (a token without a tier): the smallest.
        "token_bucket": _per_minute(fallback_per_minute),
        "always_consume_default_token_bucket": False,   # else it would be one bucket for all
        "max_dynamic_descriptors": MAX_USERS_TRACKED,
        "descriptors": descriptors,
        "filter_enabled": {**everyone, "runtime_key": "rate_limit_enabled"},
        "filter_enforced": {**everyone, "runtime_key": "rate_limit_enforced"},
        # Without this a limited call is UNAVAILABLE, which clients (and retry policies) retry.
        "rate_limited_as_resource_exhausted": True,
    }


def _per_minute(calls: int) -> dict:
    return {"max_tokens": calls, "tokens_per_fill": calls, "fill_interval": "60s"}


def _route(name: str, match: dict, headers: tuple[dict, ...], action: dict,
           filters: dict | None = None) -> dict:
    if headers:
        match = {**match, "headers": list(headers)}
    route = {"name": name, "match": match, "route": action}
    if filters:
        route["typed_per_filter_config"] = filters
    return route


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

def _clusters(topo: Topology, otlp_endpoint: str, tls: _Tls | None) -> list[dict]:
    clusters = []
    for service in topo.services.values():
        if _pins(service):
            versions = [_cluster(_version_cluster(service, i.version), [i.port], topo)
                        for i in service.instances if i.version]
        else:
            versions = [_cluster(_cluster_name(service), [i.port for i in service.instances], topo)]
        for cluster in versions:
            if tls:
                cluster["transport_socket"] = tls.upstream(service.name)
        clusters += versions
    # Triton's python backend stub answers no grpc.health.v1: no active checks there. Triton
    # listens on loopback in plaintext, reached only through this listener (docs/deploy.md).
    clusters.append(_cluster(TRITON.name, [topo.infra.triton_grpc_port], topo, health_checks=False))
    issuer = _issuer_service(topo)
    jwks = _plain_cluster(JWKS_CLUSTER, [(LOOPBACK, issuer.jwks_port)], http2=False)
    if tls:
        jwks["transport_socket"] = tls.upstream(issuer.name, http2=False)
    clusters.append(jwks)
    if otlp_endpoint:
        host, port = otlp_endpoint.rsplit(":", 1)
        clusters.append({**_plain_cluster(OTLP_CLUSTER, [(host, int(port))]),
                         "type": "STRICT_DNS"})     # the collector may be named, not numbered
    return clusters


def _cluster(name: str, ports: list[int], topo: Topology, *, health_checks: bool = True) -> dict:
    """A cluster of service instances, with the mesh's circuit breakers, health checks and (when
    there is another host to send to) outlier detection."""
    r = topo.gateway.resilience
    cluster = _plain_cluster(name, [(LOOPBACK, port) for port in ports])
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
            "timeout": _seconds(r.health_timeout_s),
            "interval": _seconds(r.health_interval_s),
            "no_traffic_interval": _seconds(r.health_interval_s),
            "unhealthy_threshold": r.unhealthy_threshold,
            "healthy_threshold": 1,
            "grpc_health_check": {},        # grpc.health.v1 Check of the whole server
        }]
    if len(ports) > 1:
        # Ejecting the only host would turn a blip into an outage, so only where there are more.
        cluster["outlier_detection"] = {
            "consecutive_gateway_failure": r.consecutive_gateway_failures,
            "enforcing_consecutive_gateway_failure": 100,
            "base_ejection_time": _seconds(r.ejection_s),
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
