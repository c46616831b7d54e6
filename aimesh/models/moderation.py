"""The moderation artifact: the labelled train texts of moderation_examples.yaml, embedded.

Each train text is embedded by all-MiniLM-L6-v2 as the text_embedding artifact's ONNX export does it
(recommender.embed_texts: the vectors Triton's text_embedding serves, which the served model asks
for at request time). triton_models/moderation/scoring.py scores a text by its k nearest of them.
The held-out part of the YAML is never read here: bench/moderation.py scores it.

Writes: examples.npy (float32 [train texts, 384], unit rows), labels.json (one label per row), and
metrics.json: leave-one-out figures on the train part (each text scored against the other train
texts, with scoring.py) for a grid of k and threshold, the grid config.pbtxt's defaults were chosen
from. Deterministic: no randomness; the texts keep the YAML's order.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "aimesh" / "models" / "moderation_examples.yaml"
SCORING = ROOT / "triton_models" / "moderation" / "scoring.py"
GRID_K = (1, 3, 5, 7, 9)
GRID_THRESHOLD = (0.3, 0.4, 0.5, 0.6, 0.7)


def scoring_module():
    """triton_models/moderation/scoring.py, loaded by path: serving code, not a package."""
    from aimesh.models.recommender import _load
    return _load("moderation_scoring", SCORING)


def examples(part: str) -> list[dict[str, str]]:
    """One part ("train" or "heldout") of the labelled set: [{text, label}, ...] in file order."""
    import yaml
    return yaml.safe_load(EXAMPLES.read_text())[part]


def figures(unsafe_predicted: np.ndarray, unsafe_true: np.ndarray) -> dict[str, Any]:
    """Accuracy, and precision and recall of the unsafe class, for boolean predictions."""
    hits = int((unsafe_predicted & unsafe_true).sum())
    return {"n": int(len(unsafe_true)),
            "accuracy": round(float((unsafe_predicted == unsafe_true).mean()), 4),
            "unsafe_precision": round(hits / max(int(unsafe_predicted.sum()), 1), 4),
            "unsafe_recall": round(hits / max(int(unsafe_true.sum()), 1), 4)}


def leave_one_out(vectors: np.ndarray, labels: list[str]) -> list[dict[str, Any]]:
    """Each train text scored against all the others, for every k and threshold of the grid."""
    scoring = scoring_module()
    similarity = vectors @ vectors.T
    np.fill_diagonal(similarity, -np.inf)          # a text is never its own neighbour
    truth = np.array([label != scoring.SAFE for label in labels])
    rows = []
    for k in GRID_K:
        for threshold in GRID_THRESHOLD:
            unsafe, _ = scoring.Scorer(vectors, labels, k, threshold).score(similarity)
            rows.append({"k": k, "threshold": threshold, **figures(unsafe >= threshold, truth)})
    return rows


def build(out: Path, progress: Callable[[str], None]) -> None:
    from aimesh.models.recommender import embed_texts
    scoring = scoring_module()
    train = examples("train")
    texts, labels = [e["text"] for e in train], [e["label"] for e in train]
    vectors = embed_texts(texts, progress).astype(np.float64)
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    np.save(out / scoring.EXAMPLES, vectors)
    (out / scoring.LABELS).write_text(json.dumps(labels) + "\n")

    progress(f"leave-one-out on {len(texts)} train texts, k in {GRID_K}")
    grid = leave_one_out(vectors, labels)
    counts = {label: labels.count(label) for label in sorted(set(labels))}
    (out / "metrics.json").write_text(json.dumps(
        {"train": counts, "leave_one_out": grid}, indent=2) + "\n")
    for row in grid:
        if row["threshold"] == 0.5:
            progress(f"k={row['k']} threshold 0.5: accuracy {row['accuracy']:.3f}, unsafe precision "
                     f"{row['unsafe_precision']:.3f}, recall {row['unsafe_recall']:.3f}")
