"""What the benchmarks share besides the mesh harness (aimesh.harness)."""
from __future__ import annotations

import os
from pathlib import Path

import psutil


def machine() -> str:
    """The machine a figure was measured on, in one line."""
    model = next((line.split(":", 1)[1].strip() for line in
                  Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")),
                 "unknown CPU")
    return f"{os.cpu_count()} CPUs (nproc {len(os.sched_getaffinity(0))}), {model}, " \
           f"{psutil.virtual_memory().total / 1024 ** 3:.0f} GiB RAM"
