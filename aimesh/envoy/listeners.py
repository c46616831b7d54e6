"""The two listeners (edge, east-west): one HTTP connection manager each, built by one function."""
from __future__ import annotations

from typing import Any

from aimesh.topology import Topology

from .common import (
    CORS_FILTER,
    HANDSHAKE_FAILED,
    HTTP2_WINDOWS,
    MAX_WEB_FILE_BYTES,
    Addressing,
    seconds,
    socket_address,
)
from .filters import access_log, cors_policy, http_filters, local_replies, tracer
from .routes import method_routes
from .tls import Tls


def build_listener(name: str, port: int, extra_routes: list[dict], *, topo: Topology,
              access_log_path: str, tracing: bool, edge_filters: list[dict],
              public_prefixes: tuple[str, ...], trust_request_id: bool,
              public_paths: tuple[str, ...] = (), token_optional: tuple[str, ...] = (),
              tls: Tls | None = None,
              addressing: Addressing) -> dict:
    """A listener with every service's routes (built afresh, so the YAML has no aliases) after
    its own extra routes, and the one filter chain."""
    edge = name == "edge"
    routes = extra_routes + [r for s in topo.services.values() for r in method_routes(s, topo, edge=edge)]
    virtual_host: dict[str, Any] = {"name": name, "domains": ["*"], "routes": routes}
    route_config: dict[str, Any] = {"name": name, "virtual_hosts": [virtual_host]}
    if edge:
        virtual_host["typed_per_filter_config"] = {CORS_FILTER: cors_policy(topo)}
        route_config["max_direct_response_body_size_bytes"] = MAX_WEB_FILE_BYTES
    hcm: dict[str, Any] = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager"
                 ".v3.HttpConnectionManager",
        "stat_prefix": name,
        "codec_type": "AUTO",                       # gRPC clients speak h2c; AUTO detects it
        "http2_protocol_options": HTTP2_WINDOWS,
        "generate_request_id": True,
        # The edge is the trust boundary: with the peer address as the client's, Envoy treats the
        # call as external and replaces a client-chosen x-request-id (without it, it keeps it).
        # East-west callers forward the user's x-request-id, which must survive.
        "use_remote_address": not trust_request_id,
        "preserve_external_request_id": trust_request_id,
        "stream_idle_timeout": seconds(topo.gateway.stream_idle_timeout_s),
        "access_log": [access_log(name, access_log_path)],
        "route_config": route_config,
        "http_filters": [*edge_filters, *http_filters(topo, public_prefixes, public_paths, addressing,
                                                           token_optional, check_requests=edge)],
    }
    hcm["local_reply_config"] = local_replies(edge=edge)
    if tracing:
        hcm["tracing"] = tracer(name, topo.observability.trace_sampling)
    chain: dict[str, Any] = {"filters": [{"name": "envoy.filters.network.http_connection_manager",
                          "typed_config": hcm}]}
    listener: dict[str, Any] = {"name": name, "address": socket_address(port, addressing.listen),
                "filter_chains": [chain]}
    if tls:
        chain["transport_socket"] = tls.downstream()
        # The caller's SPIFFE id in x-forwarded-client-cert, for faults scoped to one caller.
        hcm["forward_client_cert_details"] = "SANITIZE_SET"
        hcm["set_current_client_cert_details"] = {"uri": True}
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
