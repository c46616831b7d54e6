"""text_embedding: a PLACEHOLDER embedder with no learned weights.

It feature-hashes word tokens and word bigrams into 384 dimensions and L2-normalises the result,
so texts that share words score a higher cosine than texts that do not. That is enough for the
mesh to be built and tested end to end; the real MiniLM model replaces it with the same
interface (TEXT -> EMBEDDING [384], fp32, unit length).
"""
from __future__ import annotations

import hashlib
import re

import numpy as np
import triton_python_backend_utils as pb_utils

DIM = 384
WORD = re.compile(r"\w+")


def _slot(feature: str) -> tuple[int, float]:
    """A stable (index, sign) for a feature: blake2b, not hash(), so every process agrees."""
    h = int.from_bytes(hashlib.blake2b(feature.encode(), digest_size=8).digest(), "little")
    return h % DIM, (1.0 if (h >> 63) & 1 else -1.0)


def embed(text: str) -> np.ndarray:
    """A unit vector for text; zeros for text without a single word."""
    tokens = WORD.findall(text.lower())
    features = tokens + [f"{a} {b}" for a, b in zip(tokens, tokens[1:])]  # no token holds a space
    vector = np.zeros(DIM, dtype=np.float32)
    for feature in features:
        index, sign = _slot(feature)
        vector[index] += sign
    norm = np.linalg.norm(vector)
    return vector / norm if norm > 0 else vector


class TritonPythonModel:
    def execute(self, requests):
        # Dynamic batching hands over several requests at once; each may carry several rows.
        responses = []
        for request in requests:
            texts = pb_utils.get_input_tensor_by_name(request, "TEXT").as_numpy().reshape(-1)
            rows = [embed(t.decode("utf-8", "replace") if isinstance(t, bytes) else str(t))
                    for t in texts]
            embedding = np.stack(rows) if rows else np.zeros((0, DIM), dtype=np.float32)
            responses.append(pb_utils.InferenceResponse(
                output_tensors=[pb_utils.Tensor("EMBEDDING", embedding.astype(np.float32))]))
        return responses
