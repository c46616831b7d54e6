"""bench/gpu_throughput.py runs on a GPU machine only now and then: at least its imports and
arguments must hold here (the figures are its own run's, never a test's)."""
from __future__ import annotations

import os
import subprocess
import sys

from aimesh.paths import ROOT


def test_gpu_bench_starts():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "gen" / "python")])}
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_throughput.py"), "--help"],
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "--random-weights" in result.stdout
