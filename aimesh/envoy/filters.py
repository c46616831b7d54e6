"""The HTTP filters: identity (strip, JWT), the east-west allow list, limits, grpc-web,
JSON, CORS, tracing and the access log."""
from __future__ import annotations

from pathlib import Path

from aimesh.topology import TRITON as TRITON_NAME
from aimesh.topology import Topology
from services.kit.identity import CLAIM_HEADERS, JWKS_PATH
from services.kit.tls import spiffe_id

from .common import (
    BUFFER_FILTER,
    CORS_FILTER,
    DEADLINE_EXCEEDED,
    FAULT_FILTER,
    GRPC_STATS_FILTER,
    GRPC_WEB_HEADERS,
    INVALID_ARGUMENT,
    JWKS_CLUSTER,
    JWT_PROVIDER,
    LUA_FILTER,
    MAX_REQUEST_BYTES,
    OTLP_CLUSTER,
    RATE_LIMIT_FILTER,
    RATE_LIMITED_MESSAGE,
    RBAC_FILTER,
    RESOURCE_EXHAUSTED,
    TRITON,
    Addressing,
    issuer_service,
    seconds,
)


def rbac_filter(topo: Topology) -> dict:
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


def client_filters(topo: Topology, descriptor_set: str) -> list[dict]:
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
            "max_request_body_size": MAX_REQUEST_BYTES,   # as for gRPC (413 past it)
            "print_options": {"always_print_primitive_fields": True},
        }},
    ]


def local_replies(*, edge: bool) -> dict:
    """What the gateway's own refusals read, in gRPC's words whatever the protocol.
    - A request past the size limit (the buffer filter's HTTP 413) is RESOURCE_EXHAUSTED, as the
      services say it; Envoy's HTTP-to-gRPC mapping would make it UNKNOWN.
    - A rate-limited grpc-web call (edge) is RESOURCE_EXHAUSTED, as over gRPC. Envoy decides
      whether a local reply is gRPC from the request as it arrived, and grpc-web is not gRPC
      there: the limiter's HTTP 429 would become UNAVAILABLE in the grpc_web filter.
    - A grpc-web client's 400 (the grpc_web filter's refusal) is INVALID_ARGUMENT, and its 504 (the
      route's duration bound) DEADLINE_EXCEEDED, as over gRPC.
    A grpc-web client's reply (they all send x-grpc-web) is written here in the form the grpc_web
    filter passes through untouched: trailers-only, no body."""
    def status(code: int, runtime_key: str) -> dict:
        return {"status_code_filter": {"comparison": {"op": "EQ", "value": {
            "default_value": code, "runtime_key": runtime_key}}}}
    too_large = status(413, "local_reply.too_large_status")
    rate_limited = status(429, "local_reply.rate_limited_status")
    grpc_web_client = {"header_filter": {"header": {"name": "x-grpc-web", "present_match": True}}}

    def trailers(grpc_status: str, message: str) -> list[dict]:
        return [{"header": {"key": k, "value": v}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}
                for k, v in {"grpc-status": grpc_status, "grpc-message": message}.items()]
    trailers_only_web = {"status_code": 200,
                         "body_format_override": {"text_format_source": {"inline_string": ""},
                                                  "content_type": "application/grpc-web+proto"}}
    too_large_message = f"request larger than {MAX_REQUEST_BYTES} bytes"
    mappers = [
        {"filter": {"and_filter": {"filters": [too_large, grpc_web_client]}},
         "headers_to_add": trailers(RESOURCE_EXHAUSTED, too_large_message), **trailers_only_web},
        {"filter": too_large, "headers_to_add": trailers(RESOURCE_EXHAUSTED, too_large_message)},
    ]
    if edge:
        mappers.append({"filter": {"and_filter": {"filters": [rate_limited, grpc_web_client]}},
                        "headers_to_add": trailers(RESOURCE_EXHAUSTED, RATE_LIMITED_MESSAGE),
                        **trailers_only_web})
        # The grpc_web filter's own refusal (base64 that is not) says INTERNAL; the route's
        # duration bound, HTTP 504 to a grpc-web client, would read UNAVAILABLE.
        for code, grpc_status, message in ((400, INVALID_ARGUMENT, "request: not a grpc-web message"),
                                           (504, DEADLINE_EXCEEDED, "deadline exceeded at the gateway")):
            mappers.append({"filter": {"and_filter": {"filters": [status(code, f"local_reply.web_{code}"),
                                                                  grpc_web_client]}},
                            "headers_to_add": trailers(grpc_status, message), **trailers_only_web})
    return {"mappers": mappers}


def cors_policy(topo: Topology) -> dict:
    return {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy",
        "allow_origin_string_match": [{"exact": topo.gateway.web_origin}],
        "allow_methods": "POST, GET, OPTIONS",
        "allow_headers": GRPC_WEB_HEADERS,
        "expose_headers": "grpc-status,grpc-message",
        "max_age": "600",
    }


def http_filters(topo: Topology, public_prefixes: tuple[str, ...],
                 public_paths: tuple[str, ...], addressing: Addressing,
                 token_optional: tuple[str, ...] = (), *, check_requests: bool = False) -> list[dict]:
    # Order matters: strip forged identity, then verify the token and write the real identity,
    # then count the call against the user's limit (it reads that identity), then read a unary
    # request whole and refuse it past the size limit, then (at the edge) check its framing, then
    # count its gRPC status per cluster (injected faults included, so a faulty canary shows in its
    # version's stats), then inject faults, then route.
    return [_strip_identity_filter(),
            _jwt_filter(topo, public_prefixes, public_paths, addressing, token_optional),
            _rate_limit_filter(), _buffer_filter(), *([_check_filter()] if check_requests else []),
            _grpc_stats_filter(), _fault_filter(), _router_filter()]


GRPC_CHECK = Path(__file__).with_name("grpc_check.lua").read_text()


def _check_filter() -> dict:
    """Lua, with one named source per check in grpc_check.lua; routes that name none pass."""
    def source(check: str) -> dict:
        return {"inline_string": f"{GRPC_CHECK}\nfunction envoy_on_request(handle)\n  check_{check}(handle)\nend\n"}
    return {"name": LUA_FILTER, "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
        "default_source_code": {"inline_string": "function envoy_on_request(handle) end"},
        "source_codes": {check: source(check) for check in ("one_message", "client_stream")}}}


def _buffer_filter() -> dict:
    return {"name": BUFFER_FILTER, "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer",
        "max_request_bytes": MAX_REQUEST_BYTES}}


def _strip_identity_filter() -> dict:
    # A route's request_headers_to_remove runs in the router, i.e. AFTER jwt_authn, and would
    # erase the verified headers too; this filter removes the client's copies before the check.
    return {
        "name": "envoy.filters.http.header_mutation",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3"
                     ".HeaderMutation",
            "mutations": {"request_mutations": [{"remove": h} for h in CLAIM_HEADERS.values()]},
        },
    }


# Verified tokens kept, per listener and worker thread. Each costs Envoy ~5.7 KB (measured:
# bench/edge_memory.py), so the cache is what grew Envoy in the soak, where users log in again:
# 10,000 would be ~57 MB per listener and worker. A token past the 1,000 most recent is verified
# again (one signature check).
JWT_CACHE_SIZE = 1_000


def _jwt_filter(topo: Topology, public_prefixes: tuple[str, ...],
                public_paths: tuple[str, ...], addressing: Addressing,
                token_optional: tuple[str, ...]) -> dict:
    issuer = issuer_service(topo)
    host, port = addressing.upstream(issuer.jwks_port)
    provider = {
        "issuer": topo.gateway.issuer,
        "audiences": [topo.gateway.audience],
        "remote_jwks": {
            "http_uri": {
                "uri": f"{'https' if topo.identity.mtls else 'http'}://{host}:{port}{JWKS_PATH}",
                "cluster": JWKS_CLUSTER,
                "timeout": "2s",
            },
            # user-svc signs with a new key only once this much time has passed since publishing it
            "cache_duration": seconds(topo.gateway.jwks_cache_s),
            # Fetch in the background: the listener opens even while user-svc is still starting,
            # and a failed fetch is retried (failed_refetch_duration) instead of waiting a cache.
            "async_fetch": {"fast_listener": True, "failed_refetch_duration": "1s"},
        },
        "forward": True,                  # services forward the token on east-west calls
        # A token verified once is not verified again until its exp (which is still checked):
        # a client sends the same token on every call, and the signature check is the costly part.
        "jwt_cache_config": {"jwt_cache_size": JWT_CACHE_SIZE},
        "claim_to_headers": [{"header_name": h, "claim_name": c} for c, h in CLAIM_HEADERS.items()],
    }
    # First matching rule wins: public paths have no requirement, everything else needs a token.
    rules = [{"match": match} for match in _public_matches(topo)]
    rules += [{"match": {"prefix": p}} for p in public_prefixes]
    rules += [{"match": {"path": p}} for p in public_paths]
    # A workload's call on a user's behalf (identity.on_behalf) carries no token; one that does
    # is still verified, so an operator's admin token keeps its meaning there.
    rules += [{"match": {"path": p}, "requires": {"requires_any": {"requirements": [
        {"provider_name": JWT_PROVIDER}, {"allow_missing": {}}]}}} for p in token_optional]
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


def _grpc_stats_filter() -> dict:
    """Per cluster and method: calls by gRPC status (cluster.<c>.grpc.<service>.<method>.<code>)
    and the upstream time histogram (...upstream_rq_time), read by `aimesh canary` and `top`."""
    return {"name": GRPC_STATS_FILTER, "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.grpc_stats.v3.FilterConfig",
        "stats_for_all_methods": True, "enable_upstream_stats": True}}


def _fault_filter() -> dict:
    # Injects nothing itself: each faulty route carries its own config (aimesh/overrides.py).
    return {"name": FAULT_FILTER, "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"}}


def _router_filter() -> dict:
    return {
        "name": "envoy.filters.http.router",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
    }


def tracer(listener: str, sampling: float) -> dict:
    # Envoy starts (or continues) the trace and passes `traceparent` on, so the services'
    # spans join the same trace. It decides whether a new trace is sampled (the runtime key
    # tracing.random_sampling overrides the share live); the services follow that decision.
    return {"random_sampling": {"value": round(sampling * 100, 4)},
            "provider": {"name": "envoy.tracers.opentelemetry", "typed_config": {
                "@type": "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig",
                "grpc_service": {"envoy_grpc": {"cluster_name": OTLP_CLUSTER}, "timeout": "1s"},
                "service_name": f"envoy-{listener}",
            }}}


def access_log(listener: str, path: str) -> dict:
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
