"""Top-k recommendations from a history of item ids: the one scoring code, numpy only.

The build evaluates with it and Triton serves with it, so the stored metrics describe exactly
what is served. A version is a set of arrays (an .npz written by aimesh/models/recommender.py):

    item_ids       int64 [N]     MovieLens item ids, row i of every other array is item_ids[i]
    item_factors   fp32  [N, F]  collaborative factors (implicit ALS); zero for cold items in v1
    gram           fp32  [F, F]  item_factorsᵀ·item_factors, precomputed for the fold-in
    known          bool  [N]     items that may be recommended (v1: seen in training; v2: all)
    popularity     fp32  [N]     training interactions per item: the answer to an empty history
    alpha, regularization        implicit-ALS confidence and L2 weight, for the fold-in
    content        fp32  [N, D]  (v2 only) unit text embedding of title + year + genres
    content_weight               (v2 only) how much content similarity adds to the score

A user is not stored: their factor vector is solved from the history at request time (the ALS
"fold-in"), so a new user or a new purchase changes the answer without retraining.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np


class Ranker:
    def __init__(self, arrays: dict[str, np.ndarray]):
        self.item_ids = arrays["item_ids"].astype(np.int64)
        self.factors = arrays["item_factors"].astype(np.float32)
        self.gram = arrays["gram"].astype(np.float64)
        self.known = arrays["known"].astype(bool)
        self.popularity = arrays["popularity"].astype(np.float32)
        self.alpha = float(arrays["alpha"])
        self.regularization = float(arrays["regularization"])
        self.content = arrays["content"].astype(np.float32) if "content" in arrays else None
        self.content_weight = float(arrays["content_weight"]) if "content" in arrays else 0.0
        self.row = {int(item): row for row, item in enumerate(self.item_ids)}

    @classmethod
    def load(cls, path: Path) -> Ranker:
        with np.load(path) as arrays:
            return cls(dict(arrays))

    def rows(self, item_ids) -> np.ndarray:
        """Rows of the ids this model knows, in order, duplicates dropped; unknown ids ignored."""
        rows = dict.fromkeys(self.row[i] for i in map(int, item_ids) if i in self.row)
        return np.fromiter(rows, dtype=np.int64, count=len(rows))

    def user_vector(self, history_rows: np.ndarray) -> np.ndarray:
        """The implicit-ALS user factors that best explain this history (confidence 1 + alpha)."""
        seen = self.factors[history_rows].astype(np.float64)
        system = self.gram + self.alpha * seen.T @ seen
        system[np.diag_indices_from(system)] += self.regularization
        return np.linalg.solve(system, (1.0 + self.alpha) * seen.sum(axis=0))

    def scores(self, history_rows: np.ndarray) -> np.ndarray:
        """A score for every item (higher is better) given the history's rows."""
        if not self.known[history_rows].any():
            return self.popularity.copy()     # nothing to go on: what most people watched
        scores = self.factors @ self.user_vector(history_rows).astype(np.float32)
        if self.content is not None:
            taste = self.content[history_rows].mean(axis=0)
            taste /= max(float(np.linalg.norm(taste)), 1e-12)
            scores += self.content_weight * (self.content @ taste)
        return scores

    def top_k(self, history, k: int, exclude=()) -> tuple[np.ndarray, np.ndarray]:
        """(item ids, scores) of the k best items, best first; fewer if fewer are eligible.

        Never returns an item of the history, of exclude, or one the model does not know."""
        history_rows = self.rows(history)
        scores = self.scores(history_rows).astype(np.float32)
        scores[~self.known] = -np.inf
        scores[history_rows] = -np.inf
        scores[self.rows(exclude)] = -np.inf
        k = min(k, int(np.isfinite(scores).sum()))
        # A full sort by score, then by item id (a few thousand items: microseconds), so ties
        # at the cut come back the same on every machine; argpartition would pick among them.
        best = np.lexsort((self.item_ids, -scores))[:max(k, 0)]
        return self.item_ids[best], scores[best]
