"""Text -> unit vectors, from Triton's text_embedding model."""
from __future__ import annotations

import asyncio

import numpy as np

from services.kit.inference import Triton

EMBEDDING_MODEL = "text_embedding"
MODEL_MAX_BATCH = 64   # max_batch_size in the model's config.pbtxt


class Embedder:
    def __init__(self, triton: Triton):
        self.triton = triton

    async def embed(self, texts: list[str], *, timeout_s: float | None = None) -> np.ndarray:
        """Chunks of the model's batch limit, sent together so Triton can batch them.
        The deadline is the caller's (a search), or `timeout_s` for work with no caller."""
        chunks = [texts[i:i + MODEL_MAX_BATCH] for i in range(0, len(texts), MODEL_MAX_BATCH)]
        replies = await asyncio.gather(*(
            self.triton.infer(EMBEDDING_MODEL,
                              {"TEXT": np.array([[t.encode()] for t in chunk], dtype=np.object_)},
                              timeout_s=timeout_s)
            for chunk in chunks))
        return np.concatenate([reply["EMBEDDING"] for reply in replies])


