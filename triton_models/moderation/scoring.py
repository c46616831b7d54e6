"""How moderation scores a text: its k nearest labelled examples in text_embedding space.

Pure numpy, one copy for every reader: model.py (serving), the build (aimesh/models/moderation.py,
leave-one-out figures on the train part), bench/moderation.py (the held-out part) and the tests.

UNSAFE is the share of unsafe examples among the k nearest, each counted with its cosine similarity
(negative similarities count zero): a close unsafe neighbour outweighs a distant safe one, and the
score moves smoothly instead of in steps of 1/k, so a threshold between steps means something. On
the train part (leave-one-out) weighting and plain counting were within one text of each other at
k=5; the weighting is for the smoother score. CATEGORY is the label of the most similar unsafe
example among the k when UNSAFE reaches the threshold, else empty: with a threshold above zero there
always is one, so a non-empty CATEGORY means exactly UNSAFE >= threshold. A blank text is safe.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

SAFE = "safe"
EXAMPLES = "examples.npy"        # float32 [examples, 384], unit rows: the train texts' embeddings
LABELS = "labels.json"           # ["safe" or a category, one per row of EXAMPLES]


def nearest(similarity: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k most similar columns of each row (most similar first, ties by lower column) and
    their similarities: rows [n, k], sims [n, k]."""
    k = min(k, similarity.shape[1])
    rows = np.argsort(-similarity, axis=1, kind="stable")[:, :k]
    return rows, np.take_along_axis(similarity, rows, axis=1)


def unsafe_share(sims: np.ndarray, unsafe: np.ndarray) -> np.ndarray:
    """Per row, the similarity-weighted share of unsafe neighbours, in [0, 1] (float32 [n]).
    sims, unsafe: [n, k], the neighbours' similarities and whether each is unsafe. A row whose
    neighbours are all at similarity <= 0 counts them plainly."""
    weights = np.clip(sims.astype(np.float64), 0.0, None)
    plain = weights.sum(axis=1) <= 0.0
    weights[plain] = 1.0
    share = (weights * unsafe).sum(axis=1) / weights.sum(axis=1)
    return np.clip(share, 0.0, 1.0).astype(np.float32)


class Scorer:
    """Unit text embeddings -> (UNSAFE float32 [n], CATEGORY list of n str) against labelled
    examples."""

    def __init__(self, examples: np.ndarray, labels: list[str], k: int, threshold: float):
        if len(examples) != len(labels) or not labels:
            raise ValueError(f"{len(examples)} examples for {len(labels)} labels")
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {threshold}")
        self.examples = np.asarray(examples, dtype=np.float32)
        self.labels = np.array(labels, dtype=object)
        self.unsafe = self.labels != SAFE
        self.k = k
        self.threshold = threshold

    @classmethod
    def load(cls, folder: Path, k: int, threshold: float) -> Scorer:
        """The examples the build wrote into `folder` (the artifact)."""
        return cls(np.load(folder / EXAMPLES), json.loads((folder / LABELS).read_text()), k,
                   threshold)

    def texts(self, texts: list[str], embed: Callable[[list[str]], np.ndarray]
              ) -> tuple[np.ndarray, list[str]]:
        """As __call__, for texts, embedding (embed: texts -> vectors) only those with words in
        them: a blank text (empty or whitespace) has nothing to publish, so it is safe (UNSAFE 0,
        CATEGORY empty), where its embedding would land wherever [CLS] [SEP] happens to."""
        unsafe = np.zeros(len(texts), dtype=np.float32)
        categories = [""] * len(texts)
        worded = [i for i, text in enumerate(texts) if text.strip()]
        if worded:
            scores, found = self(embed([texts[i] for i in worded]))
            unsafe[worded] = scores
            for i, category in zip(worded, found, strict=True):
                categories[i] = category
        return unsafe, categories

    def __call__(self, vectors: np.ndarray) -> tuple[np.ndarray, list[str]]:
        vectors = np.asarray(vectors, dtype=np.float32).reshape(-1, self.examples.shape[1])
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return self.score(vectors / np.where(norms > 0, norms, 1.0) @ self.examples.T)

    def score(self, similarity: np.ndarray) -> tuple[np.ndarray, list[str]]:
        """As __call__, from the texts' similarities to every example [n, examples] (the build
        masks each example's own column to score it leave-one-out)."""
        rows, sims = nearest(similarity, self.k)
        unsafe = self.unsafe[rows]
        shares = unsafe_share(sims, unsafe)
        categories = []
        for share, neighbours, flagged in zip(shares, rows, unsafe, strict=True):
            # argmax finds the first (most similar) unsafe neighbour; one exists when share > 0.
            flagged_any = share >= self.threshold and flagged.any()
            categories.append(str(self.labels[neighbours[np.argmax(flagged)]]) if flagged_any else "")
        return shares, categories
