"""Embedding throughput: Triton at concurrency 64, one sentence per request, against the same
model called in-process with onnxruntime at its best batch size (the limit on this machine).

Prints figures and the ratio (target: Triton >= 70% of the limit); asserts none. Builds the model
if needed, starts its own Triton (state in a temporary folder, ports shifted by
AIMESH_PORT_OFFSET, default 2000) and stops it. Run it as bin/aimesh runs the CLI:

  bin/aimesh bench embedding_throughput
"""
from __future__ import annotations

import json
import os
import time

import numpy as np
import onnxruntime
import tritonclient.grpc as grpcclient
from helpers import loadgen, lone_triton
from tokenizers import Tokenizer

from aimesh import models, topology, triton

MODEL = "text_embedding"
CONCURRENCY = 64
REQUESTS = 3000
BATCH_SIZES = (1, 8, 16, 32, 64, 128)
SENTENCES_PER_BATCH_SIZE = 1024


def sentences() -> list[str]:
    """The build's reference sentences but the one longer than the model's limit: 1 to 30 tokens."""
    stored = json.loads((models.output(MODEL) / "reference.json").read_text())
    return [s for s in stored["sentences"] if 0 < len(s) < 200]


def in_process_best(texts: list[str]) -> tuple[int, float]:
    """(batch size, sentences/s) of the fastest batch size: tokenising included, as Triton does."""
    artifact = models.output(MODEL)
    tokenizer = Tokenizer.from_file(str(artifact / "tokenizer.json"))
    session = onnxruntime.InferenceSession(str(artifact / "model.onnx"),
                                           providers=["CPUExecutionProvider"])
    best = (0, 0.0)
    for batch_size in BATCH_SIZES:
        stream = [texts[i % len(texts)] for i in range(SENTENCES_PER_BATCH_SIZE)]
        started = time.perf_counter()
        for start in range(0, len(stream), batch_size):
            encodings = tokenizer.encode_batch(stream[start:start + batch_size])
            session.run(None, {
                "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
                "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64)})
        rate = len(stream) / (time.perf_counter() - started)
        print(f"  in-process onnxruntime, batch {batch_size:>3}: {rate:7.1f} sentences/s")
        best = max(best, (batch_size, rate), key=lambda pair: pair[1])
    return best


def through_triton(client: grpcclient.InferenceServerClient, texts: list[str], requests: int) -> float:
    """Sentences/s with CONCURRENCY single-sentence requests in flight."""
    def send(i: int, done) -> None:
        tensor = grpcclient.InferInput("TEXT", [1, 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[texts[i % len(texts)].encode()]], dtype=object))
        client.async_infer(MODEL, [tensor], callback=lambda result, error: done(error),
                           client_timeout=60)
    return loadgen.run(requests, CONCURRENCY, send)[1]


def main() -> None:
    models.build([MODEL])
    texts = sentences()
    infra = topology.load(port_offset=int(os.environ.get("AIMESH_PORT_OFFSET", "2000"))).infra
    print(f"{len(texts)} distinct sentences, {os.cpu_count()} cores")
    batch_size, limit = in_process_best(texts)

    with lone_triton.serving(MODEL, infra) as client:
        through_triton(client, texts, 300)                  # warm up
        before = triton.inference_counts(infra.triton_metrics_port, MODEL)
        rate = through_triton(client, texts, REQUESTS)
        after = triton.inference_counts(infra.triton_metrics_port, MODEL)

    inferences, executions = (a - b for a, b in zip(after, before, strict=True))
    print(f"  Triton, concurrency {CONCURRENCY}, one sentence per request: {rate:7.1f} sentences/s"
          f" (mean executed batch {inferences / executions:.1f})")
    print(f"Triton / in-process best (batch {batch_size}): {rate / limit:.0%} (target >= 70%)")


if __name__ == "__main__":
    main()
