"""What the gateway's Envoy keeps per user: memory (tcmalloc's `allocated`, from its admin
/memory) per call with a token it has verified before, per call with a new token (a user who has
just logged in), and where that stops: the JWT cache keeps JWT_CACHE_SIZE verified tokens per
listener and worker thread (aimesh/envoy/filters.py), the oldest going first.

One account logs in TOKENS times, calling GetProfile with each new token, on one channel (one
connection, so one Envoy worker's cache); Envoy's memory is printed every STEP tokens. Login alone
and GetProfile with one token are measured beside it, so the growth is the new tokens'.

Prints figures, asserts none. Runs its own mesh (bench/topology.yaml: no limit reached) in
/tmp/aimesh-bench-edge-memory-state on AIMESH_PORT_OFFSET=2000, and always brings it down.

  bin/aimesh bench edge_memory
"""
from __future__ import annotations

import json
import shutil
import sys
import urllib.request
import uuid

import grpc
from helpers.common import machine

from aimesh.envoy.filters import JWT_CACHE_SIZE
from aimesh.harness import MeshUnderTest
from aimesh.user.v1 import user_pb2, user_pb2_grpc

TOKENS = 2 * JWT_CACHE_SIZE
STEP = JWT_CACHE_SIZE // 4
CALLS = 500            # each of the two baselines
PASSWORD = "edge memory password"


def main() -> int:
    mesh = MeshUnderTest.for_bench(state="/tmp/aimesh-bench-edge-memory-state")
    print(f"aimesh edge memory: {machine()}\nJWT cache: {JWT_CACHE_SIZE} tokens per listener and worker; "
          f"{TOKENS} new tokens, memory every {STEP}\n")
    shutil.rmtree(mesh.state, ignore_errors=True)
    memory = f"http://127.0.0.1:{mesh.topo.gateway.admin_port}/memory"

    def allocated_mib() -> float:
        with urllib.request.urlopen(memory, timeout=5) as reply:
            return int(json.loads(reply.read())["allocated"]) / 2**20
    try:
        print(f"mesh up in {mesh.up(demo_data=False):.1f} s")
        with grpc.insecure_channel(mesh.gateway) as channel:
            users = user_pb2_grpc.UserServiceStub(channel)
            email = f"edge-{uuid.uuid4().hex[:8]}@example.com"
            users.Register(user_pb2.RegisterRequest(email=email, password=PASSWORD, display_name="edge"), timeout=10)

            def login() -> str:
                return users.Login(user_pb2.LoginRequest(email=email, password=PASSWORD), timeout=10).access_token

            def profile(token: str) -> None:
                users.GetProfile(user_pb2.GetProfileRequest(), metadata=[("authorization", f"Bearer {token}")],
                                 timeout=10)
            token = login()
            for _ in range(CALLS):          # warm: connections, buffers, stats
                profile(token)
            before = allocated_mib()
            for _ in range(CALLS):
                profile(token)
            same = allocated_mib()
            for _ in range(CALLS):
                login()
            logins = allocated_mib()
            print(f"GetProfile with one token: {(same - before) * 2**20 / CALLS:+.0f} B a call; "
                  f"Login alone: {(logins - same) * 2**20 / CALLS:+.0f} B a call\n")
            print(f"{'new tokens':>10} {'allocated MiB':>14} {'B a token since the last row':>29}")
            print(f"{0:>10} {logins:>14.2f}")
            last = logins
            for made in range(1, TOKENS + 1):
                profile(login())
                if made % STEP == 0:
                    now = allocated_mib()
                    print(f"{made:>10} {now:>14.2f} {(now - last) * 2**20 / STEP:>29.0f}", flush=True)
                    last = now
    finally:
        clean = mesh.down_and_report()
    return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main())
