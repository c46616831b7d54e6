"""Recommender latency through Triton: p50/p99 at concurrency 1 and 32, for versions 1 and 2.

Each request is one user's training history from the build's samples, K=10.
Prints figures; asserts none. Builds the model if needed, starts its own Triton (state in a
temporary folder, ports shifted by AIMESH_PORT_OFFSET, default 2000) and stops it. Run it as
bin/aimesh runs the CLI:

  bin/aimesh bench recommender_latency
"""
from __future__ import annotations

import json
import os

import numpy as np
import tritonclient.grpc as grpcclient
from helpers import loadgen, lone_triton

from aimesh import models, topology

MODEL = "recommender"
VERSIONS = ("1", "2")
CONCURRENCIES = (1, 32)
REQUESTS = 1000
K = 10


def histories() -> list[list[int]]:
    samples = json.loads((models.output(MODEL) / "samples.json").read_text())
    return [sample["history"] for sample in samples["1"]]


def request(history: list[int]) -> list[grpcclient.InferInput]:
    inputs = []
    for name, values, dtype, triton_type in (("HISTORY", history, np.int64, "INT64"),
                                             ("K", [K], np.int32, "INT32")):
        tensor = grpcclient.InferInput(name, [len(values)], triton_type)
        tensor.set_data_from_numpy(np.array(values, dtype=dtype))
        inputs.append(tensor)
    return inputs


def latencies(client, version: str, concurrency: int, requests: int,
              users: list[list[int]]) -> tuple[np.ndarray, float]:
    """(seconds per request, requests/s) with `concurrency` requests in flight."""
    return loadgen.run(requests, concurrency, lambda i, done: client.async_infer(
        MODEL, request(users[i % len(users)]), model_version=version,
        callback=lambda result, error: done(error), client_timeout=30))


def main() -> None:
    models.build([MODEL])
    users = histories()
    infra = topology.load(port_offset=int(os.environ.get("AIMESH_PORT_OFFSET", "2000"))).infra
    print(f"{len(users)} user histories ({min(map(len, users))}-{max(map(len, users))} items), "
          f"K={K}, {REQUESTS} requests per row, {os.cpu_count()} cores")
    with lone_triton.serving(MODEL, infra) as client:
        for version in VERSIONS:
            latencies(client, version, 8, 200, users)                 # warm up
            for concurrency in CONCURRENCIES:
                taken, rate = latencies(client, version, concurrency, REQUESTS, users)
                p50, p99 = np.percentile(taken, [50, 99]) * 1000
                print(f"  v{version} concurrency {concurrency:>2}: p50 {p50:6.2f} ms  "
                      f"p99 {p99:6.2f} ms  {rate:7.1f} requests/s")

if __name__ == "__main__":
    main()
