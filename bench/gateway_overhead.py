"""Gateway overhead: p50/p99 of one unary call (UserService/GetProfile) made directly to
user-svc vs through Envoy's edge (JWT check and per-user rate limit on), at concurrency 1 and 64.

Prints figures and ratios, asserts none. Needs a running mesh (`bin/aimesh up`; the same
AIMESH_PORT_OFFSET / AIMESH_STATE). The direct call carries the identity headers Envoy would
have written, so both paths do the same work in user-svc. The user is a pro-tier demo account;
the figures count only OK calls, so a rate-limited run shows as fewer calls, not faster ones.

  PATH=$venv/bin:$PATH PYTHONPATH=$PWD:$PWD/gen/python $venv/bin/python bench/gateway_overhead.py
"""
from __future__ import annotations

import asyncio
import statistics
import time

import grpc

from aimesh import demo, topology
from aimesh.user.v1 import user_pb2, user_pb2_grpc
from services.kit.identity import ROLE_HEADER, TIER_HEADER, USER_ID_HEADER

CALLS = 640           # per (path, concurrency); both Envoy rows stay under the pro limit
WARMUP = 50


async def measure(target: str, metadata: list[tuple[str, str]], concurrency: int) -> list[float]:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = user_pb2_grpc.UserServiceStub(channel)
        for _ in range(WARMUP):
            await stub.GetProfile(user_pb2.GetProfileRequest(), metadata=metadata, timeout=10)
        latencies: list[float] = []

        async def worker(calls: int):
            for _ in range(calls):
                started = time.perf_counter()
                await stub.GetProfile(user_pb2.GetProfileRequest(), metadata=metadata, timeout=10)
                latencies.append(time.perf_counter() - started)

        await asyncio.gather(*(worker(CALLS // concurrency) for _ in range(concurrency)))
        return latencies


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
    print(f"{'concurrency':>11} {'path':>8} {'p50':>8} {'p99':>8}")
    for concurrency in (1, 64):
        rows = {}
        for name, target, metadata in (("direct", direct, identity),
                                       ("envoy", gateway, [("authorization", f"Bearer {token}")])):
            latencies = await measure(target, metadata, concurrency)
            rows[name] = (percentile(latencies, 50), percentile(latencies, 99))
            print(f"{concurrency:>11} {name:>8} {rows[name][0]:8.2f} {rows[name][1]:8.2f}")
        (d50, d99), (e50, e99) = rows["direct"], rows["envoy"]
        print(f"{concurrency:>11} {'added':>8} {e50 - d50:8.2f} {e99 - d99:8.2f}   "
              f"ratio p50 {e50 / d50:.2f}x, p99 {e99 / d99:.2f}x")


if __name__ == "__main__":
    asyncio.run(main())
