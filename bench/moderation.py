"""Moderation on the held-out texts of aimesh/models/moderation_examples.yaml (never built in, never
used to choose k or the threshold): accuracy, unsafe precision and recall, and a confusion table of
true label against CATEGORY (an empty CATEGORY counts as safe), with config.pbtxt's k and threshold.

Scored in-process first: the built examples, each held-out text embedded by the text_embedding
artifact's onnxruntime graph (as the build embeds), scoring.py. Then the same texts through Triton
(text_embedding and moderation, a Triton of its own on ports shifted by AIMESH_PORT_OFFSET, default
2000): the same figures, how many answers agree with in-process, and latency per call (one text
per request, one at a time). `--in-process` skips Triton. Builds the artifacts if needed; asserts
nothing. Run it as bin/aimesh runs the CLI:

  bin/aimesh bench moderation [--in-process]
"""
from __future__ import annotations

import argparse
import os
import re
import time

import numpy as np

from aimesh import models, topology
from aimesh.models import moderation
from aimesh.models.recommender import embed_texts
from aimesh.paths import TRITON_MODELS

MODEL = "moderation"
LATENCY_ROUNDS = 3          # times each held-out text is sent for the latency figures


def served_parameters() -> tuple[int, float]:
    """k and threshold as config.pbtxt sets them for the served model."""
    config = (TRITON_MODELS / MODEL / "config.pbtxt").read_text()

    def value(key: str) -> str:
        found = re.search(rf'key:\s*"{key}"\s*value:\s*\{{\s*string_value:\s*"([^"]+)"', config)
        if found is None:
            raise ValueError(f"config.pbtxt sets no parameter {key}")
        return found.group(1)
    return int(value("k")), float(value("threshold"))


def report(title: str, labels: list[str], categories: list[str]) -> None:
    safe = moderation.scoring_module().SAFE
    truth = np.array([label != safe for label in labels])
    flagged = np.array([category != "" for category in categories])
    figures = moderation.figures(flagged, truth)
    print(f"\n{title}: n={figures['n']} ({int(truth.sum())} unsafe), accuracy {figures['accuracy']:.3f}, "
          f"unsafe precision {figures['unsafe_precision']:.3f}, recall {figures['unsafe_recall']:.3f}")
    names = [safe, *sorted({label for label in labels} - {safe})]
    predicted = [category or safe for category in categories]
    corner = "true \\ CATEGORY"
    print(f"  {corner:<16}" + "".join(f"{name:>10}" for name in names))
    for name in names:
        row = [sum(1 for t, p in zip(labels, predicted, strict=True) if t == name and p == other)
               for other in names]
        print(f"  {name:<16}" + "".join(f"{count:>10}" for count in row))


def in_process(texts: list[str], k: int, threshold: float) -> tuple[np.ndarray, list[str]]:
    scorer = moderation.scoring_module().Scorer.load(models.output(MODEL), k, threshold)
    return scorer.texts(texts, lambda some: embed_texts(some, lambda _: None))


def through_triton(texts: list[str]) -> tuple[np.ndarray, list[str], list[float]]:
    """UNSAFE, CATEGORY per text and the latency of every call (ms), from a Triton of its own."""
    import tritonclient.grpc as grpcclient
    from helpers import lone_triton

    infra = topology.load(port_offset=int(os.environ.get("AIMESH_PORT_OFFSET", "2000"))).infra

    def call(client, text: str):
        tensor = grpcclient.InferInput("TEXT", [1, 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[text.encode()]], dtype=object))
        result = client.infer(MODEL, [tensor])
        return float(result.as_numpy("UNSAFE")[0, 0]), result.as_numpy("CATEGORY")[0, 0].decode()

    with lone_triton.serving(("text_embedding", MODEL), infra) as client:
        answers = [call(client, text) for text in texts]
        latencies = []
        for _ in range(LATENCY_ROUNDS):
            for text in texts:
                started = time.perf_counter()
                call(client, text)
                latencies.append((time.perf_counter() - started) * 1000)
    return np.array([a[0] for a in answers]), [a[1] for a in answers], latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--in-process", action="store_true", help="skip the Triton half")
    args = parser.parse_args()
    models.build([MODEL])
    k, threshold = served_parameters()
    heldout = moderation.examples("heldout")
    texts, labels = [e["text"] for e in heldout], [e["label"] for e in heldout]
    print(f"moderation: k={k}, threshold {threshold}, "
          f"{len(moderation.examples('train'))} train examples, {len(texts)} held-out texts")

    unsafe, categories = in_process(texts, k, threshold)
    report("in-process", labels, categories)
    unsafe_true = np.array([label != "safe" for label in labels])
    print(f"  UNSAFE: safe texts {unsafe[~unsafe_true].min():.2f}..{unsafe[~unsafe_true].max():.2f}, "
          f"unsafe texts {unsafe[unsafe_true].min():.2f}..{unsafe[unsafe_true].max():.2f}")
    wrong = [(u, label, category, text) for u, label, category, text
             in zip(unsafe, labels, categories, texts, strict=True) if (label != "safe") != bool(category)]
    for u, label, category, text in wrong:
        print(f"  wrong: UNSAFE {u:.2f} {label} -> {category or 'safe'}: {text}")

    if args.in_process:
        return
    served, served_categories, latencies = through_triton(texts)
    report("through Triton", labels, served_categories)
    agree = sum(a == b for a, b in zip(categories, served_categories, strict=True))
    print(f"  agreement with in-process: CATEGORY {agree}/{len(texts)}, "
          f"UNSAFE max difference {float(np.abs(served - unsafe).max()):.4f}")
    p50, p99 = np.percentile(latencies, [50, 99])
    print(f"  latency per call (one text, sequential, {len(latencies)} calls): p50 {p50:.1f} ms, "
          f"p99 {p99:.1f} ms, mean {np.mean(latencies):.1f} ms")


if __name__ == "__main__":
    main()
