"""The GPU benchmark's models and inputs: Triton repositories with random weights of the real
architectures where the built artifacts are missing, and token ids / user histories to send."""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np

from aimesh.models.text_embedding import ARCHITECTURE, CLS, SEP
from aimesh.paths import TRITON_MODELS

HELPERS = Path(__file__).resolve().parent
EMBEDDING = "text_embedding_ids"
RECOMMENDER = "recommender"
RECOMMENDER_VERSIONS = ("1", "2")

# MovieLens 100k's catalog, for random recommender arrays of the real shape.
ITEMS, FACTORS, CONTENT_DIM = 1682, 64, 384

EMBEDDING_CONFIG = """\
name: "{name}"
backend: "python"
max_batch_size: {max_batch}
input [
  {{ name: "INPUT_IDS"  data_type: TYPE_INT64  dims: [ -1 ] }},
  {{ name: "ATTENTION_MASK"  data_type: TYPE_INT64  dims: [ -1 ] }}
]
output [ {{ name: "EMBEDDING"  data_type: TYPE_FP32  dims: [ 384 ] }} ]
dynamic_batching {{ max_queue_delay_microseconds: {delay_us} }}
instance_group [ {{ kind: {kind}  count: 1 }} ]
"""



# --- the models' files -----------------------------------------------------------------------

def random_recommender(out: Path) -> None:
    """recommender.npz for each version with random arrays of the built shapes (ranking.py)."""
    rng = np.random.default_rng(0)
    factors = rng.normal(0, 0.1, (ITEMS, FACTORS)).astype(np.float32)
    content = rng.normal(0, 1, (ITEMS, CONTENT_DIM)).astype(np.float32)
    common = {"item_ids": np.arange(1, ITEMS + 1, dtype=np.int64), "item_factors": factors,
              "gram": factors.T @ factors, "known": np.ones(ITEMS, bool),
              "popularity": rng.integers(0, 500, ITEMS).astype(np.float32),
              "alpha": np.float64(5.0), "regularization": np.float64(10.0)}
    extra = {"1": {}, "2": {"content": content / np.linalg.norm(content, axis=1, keepdims=True),
                            "content_weight": np.float64(0.5)}}
    for version in RECOMMENDER_VERSIONS:
        (out / version).mkdir(parents=True)
        np.savez(out / version / "recommender.npz", **common, **extra[version])


def repository(work: Path, embedding: Path, recommender: Path, on_gpu: bool, max_batch: int) -> Path:
    """The benchmark's Triton model repository: text_embedding_ids and the served recommender,
    each version folder with an `artifact` link, as aimesh.triton.assemble lays them out."""
    repo = work / "models"
    version = repo / EMBEDDING / "1"
    version.mkdir(parents=True)
    shutil.copy(HELPERS / "text_embedding_ids.py", version / "model.py")
    shutil.copy(TRITON_MODELS / "text_embedding" / "1" / "model.py", version / "served.py")
    (version / "artifact").symlink_to(embedding, target_is_directory=True)
    served = (TRITON_MODELS / "text_embedding" / "config.pbtxt").read_text()
    delay_us = re.search(r"max_queue_delay_microseconds:\s*(\d+)", served).group(1)
    (repo / EMBEDDING / "config.pbtxt").write_text(EMBEDDING_CONFIG.format(
        name=EMBEDDING, max_batch=max_batch, delay_us=delay_us,
        kind="KIND_GPU" if on_gpu else "KIND_CPU"))
    shutil.copytree(TRITON_MODELS / RECOMMENDER, repo / RECOMMENDER,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for v in RECOMMENDER_VERSIONS:
        (repo / RECOMMENDER / v / "artifact").symlink_to(recommender, target_is_directory=True)
    return repo


def served_max_batch() -> int:
    served = (TRITON_MODELS / "text_embedding" / "config.pbtxt").read_text()
    return int(re.search(r"max_batch_size:\s*(\d+)", served).group(1))


# --- inputs ----------------------------------------------------------------------------------

def token_rows(artifact: Path, real: bool, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids, attention_mask) [rows, width], padded on the right to one width, so that any
    requests can share a batch: the reference sentences tokenised, or random ids of such lengths."""
    if real:
        import embedding_throughput
        from tokenizers import Tokenizer
        tokenizer = Tokenizer.from_file(str(artifact / "tokenizer.json"))
        encodings = tokenizer.encode_batch(embedding_throughput.sentences())   # pads to the longest
        return (np.array([e.ids for e in encodings], dtype=np.int64),
                np.array([e.attention_mask for e in encodings], dtype=np.int64))
    lengths = rng.integers(4, 33, 64)
    ids = np.zeros((len(lengths), lengths.max()), dtype=np.int64)
    for row, length in enumerate(lengths):
        ids[row, :length] = [CLS, *rng.integers(1000, ARCHITECTURE["vocab_size"], length - 2), SEP]
    return ids, (ids != 0).astype(np.int64)


def user_histories(real: bool, rng: np.random.Generator) -> list[list[int]]:
    if real:
        import recommender_latency
        return recommender_latency.histories()
    return [rng.choice(np.arange(1, ITEMS + 1), rng.integers(5, 100), replace=False).tolist()
            for _ in range(200)]


