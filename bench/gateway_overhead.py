"""Gateway overhead: p50/p99 of one unary call (UserService/GetProfile) made directly to
user-svc vs through Envoy's edge (JWT check and per-user rate limit on), at concurrency 1 and 64.

Prints figures and ratios, asserts none. Needs a running mesh (`bin/aimesh up`; the same
AIMESH_PORT_OFFSET / AIMESH_STATE). The direct call carries the identity headers Envoy would
have written (over mTLS with the gateway's certificate, as Envoy's own call), so both paths do
the same work in user-svc. The user is a pro-tier demo account;
the figures count only OK calls, and the `limited` column says how many the rate limit refused
(a rerun within a minute can use up the bucket), so a limited run is not mistaken for a fast one.

  bin/aimesh bench gateway_overhead
"""
from __future__ import annotations

import asyncio
import statistics
import time

import grpc

from aimesh import demo, infra, paths, topology
from aimesh.user.v1 import user_pb2, user_pb2_grpc
from services.kit.identity import ROLE_HEADER, TIER_HEADER, USER_ID_HEADER
from services.kit.tls import GATEWAY, Identity, dns_name

CALLS = 640           # per (path, concurrency); both Envoy rows stay under the pro limit
WARMUP = 50


def open_channel(target: str, as_gateway: Identity | None) -> grpc.aio.Channel:
    """The edge is plaintext; user-svc's own port takes the gateway's certificate (mTLS on)."""
    if as_gateway is None:
        return grpc.aio.insecure_channel(target)
    return grpc.aio.secure_channel(target, as_gateway.channel_credentials(),
                                   options=[("grpc.ssl_target_name_override", dns_name("user"))])


async def measure(target: str, metadata: list[tuple[str, str]], concurrency: int,
                  as_gateway: Identity | None = None) -> tuple[list[float], int]:
    """Latencies of the OK calls, and how many calls the rate limit refused (a rerun within a
    minute can use up the user's bucket); any other failure ends the run."""
    async with open_channel(target, as_gateway) as channel:
        stub = user_pb2_grpc.UserServiceStub(channel)
        latencies: list[float] = []
        limited = 0

        async def call() -> float | None:
            nonlocal limited
            started = time.perf_counter()
            try:
                await stub.GetProfile(user_pb2.GetProfileRequest(), metadata=metadata, timeout=10)
            except grpc.aio.AioRpcError as error:
                if error.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                    raise
                limited += 1
                return None
            return time.perf_counter() - started

        for _ in range(WARMUP):
            await call()
        limited = 0

        async def worker(calls: int):
            for _ in range(calls):
                latency = await call()
                if latency is not None:
                    latencies.append(latency)

        await asyncio.gather(*(worker(CALLS // concurrency) for _ in range(concurrency)))
        return latencies, limited


def percentile(values: list[float], p: float) -> float:
    return statistics.quantiles(values, n=100)[int(p) - 1] * 1000


async def main() -> None:
    topo = topology.load()
    gateway = f"127.0.0.1:{topo.gateway.edge_port}"
    direct = f"127.0.0.1:{topo.services['user'].instances[0].port}"
    token = demo.login(gateway, "bob@demo.aimesh")            # pro tier: 2000 calls a minute
    with grpc.insecure_channel(gateway) as channel:
        me = user_pb2_grpc.UserServiceStub(channel).GetProfile(
            user_pb2.GetProfileRequest(), metadata=[("authorization", f"Bearer {token}")], timeout=5)
    identity = [(USER_ID_HEADER, me.profile.user_id), (TIER_HEADER, "pro"), (ROLE_HEADER, "user")]
    print(f"GetProfile, {CALLS} calls per row (ms)")
    print(f"{'concurrency':>11} {'path':>8} {'p50':>8} {'p99':>8} {'limited':>8}")
    for concurrency in (1, 64):
        rows, refused = {}, 0
        as_gateway = infra.as_workload(topo, paths.state_dir(), GATEWAY)
        for name, target, metadata, who in (
                ("direct", direct, identity, as_gateway),
                ("envoy", gateway, [("authorization", f"Bearer {token}")], None)):
            latencies, limited = await measure(target, metadata, concurrency, who)
            if len(latencies) < 2:
                raise SystemExit(f"{name}: {limited} of {CALLS} calls rate-limited; rerun in a minute")
            rows[name] = (percentile(latencies, 50), percentile(latencies, 99))
            refused += limited
            print(f"{concurrency:>11} {name:>8} {rows[name][0]:8.2f} {rows[name][1]:8.2f} {limited:>8}")
        (d50, d99), (e50, e99) = rows["direct"], rows["envoy"]
        # Refused calls return at once and lighten the load: such a row is not comparable.
        caveat = "   (rate-limited calls: not comparable)" if refused else ""
        print(f"{concurrency:>11} {'added':>8} {e50 - d50:8.2f} {e99 - d99:8.2f}   "
              f"ratio p50 {e50 / d50:.2f}x, p99 {e99 / d99:.2f}x{caveat}")


if __name__ == "__main__":
    asyncio.run(main())
