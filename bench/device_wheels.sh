#!/usr/bin/env bash
# The wheels that bench/gpu_throughput.py needs on the GPU machine and that machine lacks, into
# .device-wheels/ (ignored by git; the device tool carries it, 64 MiB with the whole tree).
# That machine has Python 3.12, a CUDA torch, numpy 2, tokenizers, transformers, onnxruntime, pyyaml,
# no network and not our environment. Pins are requirements.txt's.
#
#   bench/device_wheels.sh [PYTHON_VERSION, default 3.12] [FOLDER, default .device-wheels]
#
# Triton comes from nvidia-pytriton (55 MB as published); this drops what a Python 3.12 run never
# loads: the python backend stubs for other Pythons and the libpython 3.13 bundled for one of them
# (about 16 MB), leaving about 39 MB. tritonclient's gRPC code needs protobuf >= 6.33.5 and grpcio
# >= 1.81.1, newer than the machine may have: they travel too (installed with --target, they are
# seen by the benchmark's process only; Triton's python stub runs in the machine's own environment).
set -euo pipefail
cd "$(dirname "$0")/.."
python_version=${1:-3.12}
folder=${2:-.device-wheels}
pin() { grep -E "^$1(\[[a-z,]+\])?==" requirements.txt | sed -E 's/\[[a-z,]+\]//; s/ .*//'; }

rm -rf "$folder" && mkdir -p "$folder"
platforms=()
for n in 39 35 34 31 28 27 24 17; do platforms+=(--platform "manylinux_2_${n}_x86_64"); done
python3 -m pip download -q --no-deps --only-binary=:all: -d "$folder" \
    --python-version "$python_version" --implementation cp \
    "${platforms[@]}" --platform manylinux2014_x86_64 --platform any \
    "$(pin nvidia-pytriton)" "$(pin tritonclient)" "$(pin protobuf)" "$(pin grpcio)" \
    python-rapidjson==1.25

python3 - "$folder" "$python_version" <<'EOF'
"""Rewrite the nvidia-pytriton wheel without the files this Python never loads (RECORD too)."""
import re
import sys
import zipfile
from pathlib import Path

folder, version = Path(sys.argv[1]), sys.argv[2]
wheel = next(folder.glob("nvidia_pytriton-*.whl"))
stub = re.compile(r"pytriton/tritonserver/python_backend_stubs/(\d+\.\d+)/")


def unused(name: str) -> bool:
    other_stub = stub.match(name) and stub.match(name).group(1) != version
    # Only the 3.13 stub links the bundled libpython 3.13; the others use the machine's.
    return bool(other_stub or (version != "3.13" and
                               re.match(r"nvidia_pytriton\.libs/libpython3-.*\.13\.so", name)))


trimmed = wheel.with_suffix(".trimmed")
with zipfile.ZipFile(wheel) as source, zipfile.ZipFile(trimmed, "w", zipfile.ZIP_DEFLATED) as out:
    for item in source.infolist():
        if unused(item.filename):
            continue
        data = source.read(item)
        if item.filename.endswith(".dist-info/RECORD"):
            data = b"".join(line for line in data.splitlines(keepends=True)
                            if not unused(line.decode().split(",")[0]))
        out.writestr(item, data)
trimmed.replace(wheel)
EOF
ls -l "$folder"
du -cb "$folder"/*.whl | tail -1
