"""What the benchmarks share besides the mesh harness (aimesh.harness)."""
from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import psutil

from aimesh.harness import MeshUnderTest


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
