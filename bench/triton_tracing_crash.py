"""Does Triton survive sustained traced load? Triton 2.51 (the pip wheel's) frees a traced request's
mutex while holding it (triton-inference-server/server#7795, fixed upstream by #8144), which is
why its own spans are off by default (aimesh.traces.triton_level). For each trace level, a Triton
of its own serving text_embedding takes calls 16 at a time, each with a sampled traceparent,
spans to a sink (helpers/otlp_sink.py), until CALLS have been answered or Triton stops answering.
Run it again when the Triton wheel changes.

Prints how many calls each level took before Triton died (or that it did not); asserts nothing.
Ports shifted by AIMESH_PORT_OFFSET (default 3000).

  bin/aimesh bench triton_tracing_crash [CALLS]
"""
from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient
from helpers import loadgen, lone_triton
from helpers.common import machine

from aimesh import topology, triton

MODEL = "text_embedding"
LEVELS = ("TIMESTAMPS", "OFF")
BATCH, CONCURRENCY = 2000, 16
TEXTS = [b"space adventure", b"film noir detective", b"romantic comedy in paris"]


def calls_until_it_dies(infra: topology.Infra, level: str, calls: int, sink_url: str) -> tuple[int, bool]:
    """(calls answered, whether Triton stopped answering) at this trace level."""
    with lone_triton.serving(MODEL, infra, flags=tuple(triton.trace_flags(sink_url, level))) as client:
        def send(i: int, done: loadgen.Done) -> None:
            text = grpcclient.InferInput("TEXT", [1, 1], "BYTES")
            text.set_data_from_numpy(np.array([[TEXTS[i % len(TEXTS)]]], dtype=object))
            traceparent = f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"
            client.async_infer(MODEL, [text], callback=lambda result, error: done(error),
                               client_timeout=30, headers={"traceparent": traceparent})
        answered = 0
        while answered < calls:
            try:
                loadgen.run(BATCH, CONCURRENCY, send)
            except RuntimeError:        # calls failed: Triton died (or hung) in this batch
                return answered, True
            answered += BATCH
        return answered, False


def main() -> None:
    calls = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    infra = topology.load(port_offset=int(os.environ.get("AIMESH_PORT_OFFSET", "3000"))).infra
    print(f"{machine()}\nTriton serving {MODEL}, {CONCURRENCY} calls in flight, each traced, up to {calls} a level")
    sink = subprocess.Popen([sys.executable, "-m", "helpers.otlp_sink", str(infra.phoenix_grpc_port),
                             str(infra.phoenix_json_port)], cwd=Path(__file__).parent,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert sink.stdout is not None and sink.stdout.readline().strip() == "ready", "the sink did not start"
        for level in LEVELS:
            started = time.monotonic()
            answered, died = calls_until_it_dies(infra, level, calls,
                                                 f"http://127.0.0.1:{infra.phoenix_json_port}/v1/traces")
            print(f"  trace level {level:<10} " + (f"died after {answered:,}-{answered + BATCH:,} calls"
                  if died else f"answered all {answered:,} calls") + f" ({time.monotonic() - started:.0f} s)")
    finally:
        sink.terminate()
        sink.communicate(timeout=10)


if __name__ == "__main__":
    main()
