#!/usr/bin/env bash
# The whole GPU run, on the device machine (bench/README.md): versions, the CUDA test, then the
# benchmark; logs into $OUT (the device tool brings that folder back). Arguments go to the benchmark.
#
#   bench/gpu_run.sh [gpu_throughput.py's options]
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/aimesh-gpu-run}
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \
    .device-wheels/*.whl || exit 1
{
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    python3 -c 'import sys, torch, transformers, onnxruntime, numpy
print("Python", sys.version.split()[0], "torch", torch.__version__, "transformers",
      transformers.__version__, "onnxruntime", onnxruntime.__version__, "numpy", numpy.__version__)'
} 2>&1 | tee "$out/versions.log"
# Without the project's conftest: its mesh needs the project's environment, absent there.
PYTHONPATH=$PWD python3 -m pytest --noconftest -p no:cacheprovider -rs -q \
    tests/unit/models/test_text_embedding_cuda.py 2>&1 | tee "$out/cuda_test.log"
PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site:$PWD python3 bench/gpu_throughput.py "$@" 2>&1 \
    | tee "$out/gpu_throughput.log"
