"""The recommender model in Triton (version per instance), behind a circuit breaker."""
from __future__ import annotations

import numpy as np

from services.kit.breaker import Breaker
from services.kit.inference import Triton

MODEL = "recommender"
DEADLINE_S = 1.0   # a model slower than this is as good as down: answer from the fallback


class RecommenderModel:
    def __init__(self, triton: Triton, version: str, breaker: Breaker):
        self.triton, self.version, self.breaker = triton, version, breaker

    async def top_k(self, history: list[int], k: int, exclude: list[int]) -> list[tuple[int, float]]:
        """(item id, score) best first; kit.Unavailable when the model cannot answer."""
        inputs: dict[str, np.ndarray] = {"HISTORY": np.array(history, dtype=np.int64),
                  "K": np.array([k], dtype=np.int32),
                  "EXCLUDE": np.array(exclude, dtype=np.int64)}
        outputs = await self.breaker.call(lambda: self.triton.infer(
            MODEL, inputs, version=self.version, timeout_s=DEADLINE_S))
        return [(int(i), float(s)) for i, s in zip(outputs["ITEM_IDS"], outputs["SCORES"], strict=True) if i > 0]
