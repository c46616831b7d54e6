"""Routes: the page's files, and per service and method its timeout, retries and rate limits."""
from __future__ import annotations

import re
from typing import Any

from aimesh.overrides import grpc_status_code
from aimesh.topology import Fault, RateLimit, Service, Topology
from services.kit.identity import CLAIM_HEADERS
from services.kit.inference import MODEL_HEADER
from services.kit.tls import spiffe_id

from .common import (
    BUFFER_FILTER,
    FAULT_FILTER,
    LUA_FILTER,
    MAX_USERS_TRACKED,
    PIN_HEADER,
    RATE_LIMIT_FILTER,
    RETRY_ON,
    WEB_FILES,
    route_target,
    seconds,
    version_cluster,
    version_pins,
)


def web_routes(web_dir: str) -> list[dict]:
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


def method_routes(service: Service, topo: Topology, *, edge: bool) -> list[dict]:
    """Every route of a service: for each of its gRPC services, pinned versions first (they
    must match before the weighted split), then the split or the single cluster."""
    routes = []
    for grpc_service in service.grpc_services:
        for version, cluster in version_pins(service):
            pin = {"name": PIN_HEADER, "string_match": {"exact": version}}
            routes += _routes(service, grpc_service, {"cluster": cluster}, topo, edge=edge,
                              name=f"{service.name}-{version}", headers=(pin,))
        routes += _routes(service, grpc_service, route_target(service), topo, edge=edge, name=service.name)
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
        action: dict[str, Any] = {**target, "timeout": "0s",
                  "idle_timeout": seconds(topo.gateway.stream_idle_timeout_s)}
    else:
        # The whole call, from when the gateway has it: an injected delay counts (the router's
        # own timeout would start after it). Envoy then answers DEADLINE_EXCEEDED itself and
        # resets the upstream call; retries stay within it.
        action = {**target, "max_stream_duration": {"max_stream_duration": seconds(service.timeout_s)}}
        if idempotent:
            action["retry_policy"] = _retry_policy(topo)
    filters: dict[str, dict] = {}
    client_stream = method in service.client_streams
    if client_stream:
        filters[BUFFER_FILTER] = {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.BufferPerRoute",
            "disabled": True}
    if edge:
        filters[LUA_FILTER] = {"@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.LuaPerRoute",
                               "name": "client_stream" if client_stream else "one_message"}
    if edge and (public or service.rate_limit):
        filters[RATE_LIMIT_FILTER] = (_per_address(topo) if public or service.rate_limit is None
                                      else _per_user(service.rate_limit))
    for fault in topo.faults:
        if fault.target == service.name and fault.listener in ("", "edge" if edge else "mesh"):
            filters[FAULT_FILTER] = _fault(fault, service)
    return action, filters


def _fault(fault: Fault, service: Service) -> dict:
    """Envoy's fault filter, for this route only (the listener's own config injects nothing).
    Percent in millionths, so 0.5% is exact."""
    def share(percent: float) -> dict:
        return {"numerator": round(percent * 10_000), "denominator": "MILLION"}
    config: dict[str, Any] = {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"}
    if fault.delay_s:
        config["delay"] = {"fixed_delay": seconds(fault.delay_s), "percentage": share(fault.percent)}
    if fault.abort:
        config["abort"] = {"grpc_status": grpc_status_code(fault.abort), "percentage": share(fault.percent)}
    if fault.version:
        config["upstream_cluster"] = version_cluster(service, fault.version)
    headers = []
    if fault.model:       # the kit's Triton client names the model in a header
        headers.append({"name": MODEL_HEADER, "string_match": {"exact": fault.model}})
    if fault.caller:      # the east-west listener writes the caller's SPIFFE id into XFCC
        headers.append({"name": "x-forwarded-client-cert", "string_match": {"safe_regex": {
            "regex": f".*URI={re.escape(spiffe_id(fault.caller))}(;.*)?"}}})
    if headers:
        config["headers"] = headers
    return config


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


def _per_user(limit: RateLimit) -> dict:
    """A bucket per user and tier: each distinct user id (written by jwt_authn from the token's
    `sub`) gets its own bucket, sized by the token's tier."""
    descriptors = [{"entries": [{"key": "tier", "value": tier}, {"key": "user"}],
                    "token_bucket": _per_minute(per_minute)}
                   for tier, per_minute in (("free", limit.free), ("pro", limit.pro))]
    actions = [{"request_headers": {"header_name": CLAIM_HEADERS["tier"], "descriptor_key": "tier"}},
               {"request_headers": {"header_name": CLAIM_HEADERS["sub"], "descriptor_key": "user"}}]
    return _local_rate_limit(limit.free, descriptors, actions)


def _per_address(topo: Topology) -> dict:
    """A bucket per client address, for calls with no user (Login, Register)."""
    per_minute = topo.gateway.public_rate_limit_per_minute
    descriptors = [{"entries": [{"key": "remote_address"}], "token_bucket": _per_minute(per_minute)}]
    return _local_rate_limit(per_minute, descriptors, [{"remote_address": {}}])


def _local_rate_limit(fallback_per_minute: int, descriptors: list[dict], actions: list[dict]) -> dict:
    """The route's buckets (`descriptors`), and the `actions` that name a call's bucket: in the
    filter's own config, where Envoy reads them (a route's `rate_limits` it will stop reading)."""
    everyone = {"default_value": {"numerator": 100, "denominator": "HUNDRED"}}
    return {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
        "stat_prefix": "rate_limit",
        # Used only by a call that matches no descriptor (a token without a tier): the smallest.
        "token_bucket": _per_minute(fallback_per_minute),
        "always_consume_default_token_bucket": False,   # else it would be one bucket for all
        "max_dynamic_descriptors": MAX_USERS_TRACKED,
        "descriptors": descriptors,
        "rate_limits": [{"actions": actions}],
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
