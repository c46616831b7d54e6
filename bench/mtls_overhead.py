"""What mutual TLS costs per hop: p50/p99 of one unary call (UserService/GetProfile) on three
paths, with the mesh's mTLS on and off (bench/topology-plaintext.yaml): two meshes up at once,
on offsets 2000 and 2500, their rows interleaved in ROUNDS so drift on the machine hits both.

  service    the client straight to user-svc's port (on: mTLS with the gateway's certificate)
  edge       through Envoy's edge (plaintext for clients either way; on: Envoy -> user-svc mTLS)
  east-west  through the east-west listener (on: client -> Envoy and Envoy -> user-svc mTLS)

So service and edge each add one TLS hop, east-west two. Connections are reused (one channel per
row), as the mesh's are: the figures are the per-call cost of encryption, not of handshakes.
Prints figures, asserts none. Runs its own meshes (state in /tmp/aimesh-bench-state-mtls-<on|off>,
wiped), brought up with `--no-demo` and always brought down.

  bin/aimesh bench mtls_overhead
"""
from __future__ import annotations

import shutil
import statistics
import sys
import time
import uuid
from pathlib import Path

import grpc

from aimesh import infra
from aimesh.harness import MeshUnderTest
from aimesh.user.v1 import user_pb2, user_pb2_grpc
from services.kit.identity import ROLE_HEADER, TIER_HEADER, USER_ID_HEADER
from services.kit.tls import GATEWAY, Identity, dns_name

CALLS = 100           # per row and round: short, so drift on the machine hits both modes alike
ROUNDS = 20
WARMUP = 200
MODES = {"on": ("topology.yaml", 2000), "off": ("topology-plaintext.yaml", 2500)}
HOPS = {"service": 1, "edge": 1, "east-west": 2}     # TLS hops a call crosses when mTLS is on


def timed(stub, metadata, calls: int) -> list[float]:
    latencies = []
    for _ in range(calls):
        started = time.perf_counter()
        stub.GetProfile(user_pb2.GetProfileRequest(), metadata=metadata, timeout=10)
        latencies.append(time.perf_counter() - started)
    return latencies


def channel(target: str, identity: Identity | None, server: str) -> grpc.Channel:
    if identity is None:
        return grpc.insecure_channel(target)
    return grpc.secure_channel(target, identity.channel_credentials(),
                               options=[("grpc.ssl_target_name_override", dns_name(server))])


def paths(mesh: MeshUnderTest) -> dict[str, tuple]:
    """Each path's (target, client identity, server name, metadata), for a fresh user."""
    topo, state = mesh.topo, mesh.state
    gateway = f"127.0.0.1:{topo.gateway.edge_port}"
    with grpc.insecure_channel(gateway) as edge:
        users = user_pb2_grpc.UserServiceStub(edge)
        email = f"bench-{uuid.uuid4().hex[:8]}@example.com"
        users.Register(user_pb2.RegisterRequest(email=email, password="bench-password",
                                                display_name="bench"), timeout=10)
        login = users.Login(user_pb2.LoginRequest(email=email, password="bench-password"), timeout=10)
    token = [("authorization", f"Bearer {login.access_token}")]
    identity = [(USER_ID_HEADER, login.profile.user_id), (TIER_HEADER, "free"), (ROLE_HEADER, "user")]
    operator = infra.operator(topo, state)
    as_gateway = infra.as_workload(topo, state, GATEWAY)
    return {
        "service": (f"127.0.0.1:{topo.services['user'].instances[0].port}", as_gateway, "user", identity),
        "edge": (gateway, None, GATEWAY, token),
        "east-west": (f"127.0.0.1:{topo.gateway.mesh_port}", operator, GATEWAY, token),
    }


def main() -> None:
    meshes = {mode: MeshUnderTest(f"/tmp/aimesh-bench-state-mtls-{mode}", offset,
                                  Path(__file__).with_name(topology_file))
              for mode, (topology_file, offset) in MODES.items()}
    latencies = {(mode, name): [] for mode in MODES for name in HOPS}
    try:
        for mesh in meshes.values():
            shutil.rmtree(mesh.state, ignore_errors=True)
            mesh.up()
        channels = {}
        for mode, mesh in meshes.items():
            for name, (target, who, server, metadata) in paths(mesh).items():
                chan = channel(target, who, server)
                stub = user_pb2_grpc.UserServiceStub(chan)
                timed(stub, metadata, WARMUP)
                channels[mode, name] = (chan, stub, metadata)
        for _ in range(ROUNDS):
            for key, (_, stub, metadata) in channels.items():
                latencies[key] += timed(stub, metadata, CALLS)
        for chan, _, _ in channels.values():
            chan.close()
    finally:
        clean = [mesh.down_and_report() for mesh in meshes.values()]
    if not all(clean):
        sys.exit(1)
    print(f"\nGetProfile, {CALLS * ROUNDS} sequential calls per row (concurrency 1, "
          f"{ROUNDS} interleaved rounds), ms")
    print(f"{'path':>10} {'hops':>5} {'off p50':>8} {'on p50':>8} {'off p99':>8} {'on p99':>8} "
          f"{'added p50/hop':>14} {'ratio p50':>10}")
    for name, hops in HOPS.items():
        off50, off99 = _p50_p99(latencies["off", name])
        on50, on99 = _p50_p99(latencies["on", name])
        print(f"{name:>10} {hops:>5} {off50:8.3f} {on50:8.3f} {off99:8.3f} {on99:8.3f} "
              f"{(on50 - off50) / hops:14.3f} {on50 / off50:9.2f}x")


def _p50_p99(values: list[float]) -> tuple[float, float]:
    quantiles = statistics.quantiles(values, n=100)
    return quantiles[49] * 1000, quantiles[98] * 1000


if __name__ == "__main__":
    main()
