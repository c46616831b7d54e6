"""chat_lm: first-token latency and tokens/s through Triton against the same code in-process.

Prints figures and asserts none. Starts its own Triton with only chat_lm, by default in
/tmp/aimesh-bench-state on AIMESH_PORT_OFFSET=2000 (override with those two variables), and
always stops it. The in-process side calls triton_models/chat_lm/1/generation.py, the very code
the Triton model runs, so the ratio is what serving through Triton costs. Rounds alternate
between the two sides, so load from elsewhere on the machine falls on both alike. Run it as
bin/aimesh runs the CLI:

  venv=$(ls -td ~/.cache/aimesh/venv-*/ | head -1)   # the one bin/aimesh built (.ready in it)
  PATH=$venv/bin:$PATH PYTHONPATH=$PWD:$PWD/gen/python $venv/bin/python bench/chat_latency.py
"""
from __future__ import annotations

import json
import os
import queue
import statistics
import sys
import time
from dataclasses import dataclass

os.environ.setdefault("AIMESH_STATE", "/tmp/aimesh-bench-state")
os.environ.setdefault("AIMESH_PORT_OFFSET", "2000")

import numpy as np  # noqa: E402
import tritonclient.grpc as grpcclient  # noqa: E402

from aimesh import paths, topology, triton  # noqa: E402
from aimesh.supervisor import Supervisor  # noqa: E402

sys.path.insert(0, str(paths.TRITON_MODELS / "chat_lm" / "1"))
import generation  # noqa: E402

MODEL = "chat_lm"
MAX_TOKENS = 128
# Greedy decoding makes both sides do exactly the same work (same tokens, same count); the
# repeat penalty still applies, as in serving.
TEMPERATURE = 0.0
QUESTIONS = [
    "What is a service mesh? Answer in a paragraph.",
    "Explain how a lighthouse works.",
    "Give me three tips for learning to cook.",
    "Why is the sky blue?",
    "Describe a walk through a forest in autumn.",
]
ROUNDS = 2          # each question this many times on each side


@dataclass
class Run:
    first_token_s: float   # request sent -> first non-empty piece received
    pieces: int            # non-empty pieces streamed (one per token, but for split characters)
    decode_s: float        # first piece -> last piece

    @property
    def tokens_per_s(self) -> float:
        return (self.pieces - 1) / self.decode_s if self.pieces > 1 and self.decode_s > 0 else 0.0


def measure(pieces) -> Run:
    """Time an iterator of text pieces from the moment the request was made."""
    started = time.perf_counter()
    first = last = None
    count = 0
    for text in pieces:
        if text:
            last = time.perf_counter()
            first = first or last
            count += 1
    return Run(first - started, count, last - first)


def in_process(model, messages):
    for piece in generation.stream(model, messages, MAX_TOKENS, TEMPERATURE):
        yield piece.text


def through_triton(client, responses: queue.Queue, messages):
    inputs = []
    for name, datatype, value in (("MESSAGES", "BYTES", np.array([json.dumps(messages).encode()],
                                                                  dtype=np.object_)),
                                  ("MAX_TOKENS", "INT32", np.array([MAX_TOKENS], dtype=np.int32)),
                                  ("TEMPERATURE", "FP32", np.array([TEMPERATURE], dtype=np.float32))):
        tensor = grpcclient.InferInput(name, [1], datatype)
        tensor.set_data_from_numpy(value)
        inputs.append(tensor)
    client.async_stream_infer(MODEL, inputs)
    while True:
        result, error = responses.get(timeout=300)
        if error is not None:
            raise error
        yield result.as_numpy("DELTA")[0].decode("utf-8")
        if result.as_numpy("FINISH_REASON") is not None:
            return


def summary(name: str, runs: list[Run]) -> tuple[float, float]:
    first_ms = statistics.median(r.first_token_s for r in runs) * 1000
    tokens_per_s = sum(r.pieces - 1 for r in runs) / sum(r.decode_s for r in runs)
    print(f"{name:>12}: first token p50 {first_ms:7.1f} ms (max "
          f"{max(r.first_token_s for r in runs) * 1000:.1f}), decode {tokens_per_s:6.1f} tok/s, "
          f"{sum(r.pieces for r in runs)} pieces in {len(runs)} runs")
    return first_ms, tokens_per_s


def main() -> None:
    infra = topology.load().infra
    supervisor = Supervisor(paths.state_dir())
    component = triton.component(infra, paths.state_dir(), models=(MODEL,))
    started = time.perf_counter()
    supervisor.start(component)
    try:
        supervisor.wait_healthy([component])
        print(f"Triton with {MODEL} ready in {time.perf_counter() - started:.1f} s")
        started = time.perf_counter()
        model = generation.load()
        print(f"in-process model loaded in {time.perf_counter() - started:.1f} s "
              f"({model.n_threads} of {os.cpu_count()} CPUs, max_tokens {MAX_TOKENS}, "
              f"temperature {TEMPERATURE})")
        responses: queue.Queue = queue.Queue()
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{infra.triton_grpc_port}")
        client.start_stream(callback=lambda result, error: responses.put((result, error)))
        try:
            # One untimed answer on each side: first-call costs are not what is compared.
            messages = [{"role": "user", "content": "Hello!"}]
            measure(in_process(model, messages))
            measure(through_triton(client, responses, messages))
            direct, served = [], []
            for _ in range(ROUNDS):
                for question in QUESTIONS:
                    messages = [{"role": "user", "content": question}]
                    direct.append(measure(in_process(model, messages)))
                    served.append(measure(through_triton(client, responses, messages)))
        finally:
            client.stop_stream()
            client.close()
    finally:
        supervisor.stop("triton")
    direct_first, direct_rate = summary("in-process", direct)
    served_first, served_rate = summary("Triton", served)
    print(f"Triton / in-process: decode rate {served_rate / direct_rate:.1%} (target >= 90%), "
          f"first-token latency {served_first / direct_first:.2f}x "
          f"({served_first - direct_first:+.1f} ms)")


if __name__ == "__main__":
    main()
