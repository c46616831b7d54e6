"""What the benchmarks share besides the mesh harness (aimesh.harness)."""
from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import psutil

from aimesh.harness import MeshUnderTest
from aimesh.user.v1 import user_pb2, user_pb2_grpc


def machine() -> str:
    """The machine a figure was measured on, in one line."""
    model = next((line.split(":", 1)[1].strip() for line in
                  Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")),
                 "unknown CPU")
    return f"{os.cpu_count()} CPUs (nproc {len(os.sched_getaffinity(0))}), {model}, " \
           f"{psutil.virtual_memory().total / 1024 ** 3:.0f} GiB RAM"


@contextlib.contextmanager
def fresh_mesh(name: str, state: str) -> Iterator[MeshUnderTest]:
    """A benchmark's own mesh with demo data, from an empty state dir; says where it runs, and is
    always brought down (saying whether anything was left running)."""
    mesh = MeshUnderTest.for_bench(state=state)
    print(f"{name}: edge {mesh.gateway}\nmachine: {machine()}")
    shutil.rmtree(mesh.state, ignore_errors=True)
    try:
        print(f"mesh up with demo data in {mesh.up(demo_data=True):.1f} s")
        yield mesh
    finally:
        mesh.down_and_report()


def accounts(gateway: str, count: int) -> list[str]:
    """`count` new users, registered and logged in through the gateway: their access tokens."""
    with grpc.insecure_channel(gateway) as channel:
        users = user_pb2_grpc.UserServiceStub(channel)
        tokens = []
        for _ in range(count):
            email = f"bench-{uuid.uuid4().hex[:8]}@example.com"
            users.Register(user_pb2.RegisterRequest(email=email, password="bench password",
                                                    display_name="Bench"), timeout=10)
            tokens.append(users.Login(user_pb2.LoginRequest(email=email, password="bench password"),
                                      timeout=10).access_token)
        return tokens
