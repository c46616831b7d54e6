"""On a CUDA GPU: the fp16 TorchScript copy that the model build traces on the CPU serves there,
all of it on the device, and embeds as the ONNX graph does on the CPU under onnxruntime.

Both engines come from the same random weights of the real architecture, made by the build's own
code (text_embedding.build_random), since the GPU machine has torch but not the shipped weights.
The built copy itself (real weights, traced by `aimesh models build` here, with this machine's
torch) is checked against sentence-transformers' reference vectors where it is at hand: the
artifact when current, or the folder AIMESH_BUILT_TEXT_EMBEDDING names (encoder.pt, tokenizer.json,
reference.json: 47 MB, small enough to carry to the GPU machine without model.onnx).
Skips where torch or a CUDA device is missing (CI: its environment has no torch). On the GPU
machine (bench/README.md), without the project's conftest (its mesh needs our environment):

  python3 -m pytest --noconftest -p no:cacheprovider tests/unit/models/test_text_embedding_cuda.py
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from aimesh import models
from aimesh.models.text_embedding import ARCHITECTURE, CLS, SEP, build_random
from tests.unit.models.served import text_embedding

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")

GPU = {"model_instance_kind": "GPU", "model_instance_device_id": "0"}
AGREEMENT = 0.999           # cosine, fp16 on the GPU against fp32 onnxruntime on the CPU


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    artifact = tmp_path_factory.mktemp("text_embedding")
    build_random(artifact)
    return text_embedding(artifact)


def token_rows(rows: int, width: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """Rows of random ids of random lengths up to `width`, padded on the right."""
    ids = np.zeros((rows, width), dtype=np.int64)
    for row, length in enumerate(rng.integers(2, width + 1, rows)):
        ids[row, :length] = [CLS, *rng.integers(1000, ARCHITECTURE["vocab_size"], length - 2), SEP]
    return ids, (ids != 0).astype(np.int64)


def test_a_gpu_instance_serves_with_the_fp16_copy_wholly_on_the_device(served):
    engine = served.encoder(GPU)
    assert isinstance(engine, served.TorchEncoder)
    tensors = [*engine.module.parameters(), *engine.module.buffers()]
    assert {t.device.type for t in tensors} == {"cuda"}
    assert {t.dtype for t in engine.module.parameters()} == {torch.float16}


@pytest.mark.parametrize("rows, width", [(1, 4), (16, 32), (64, 128), (8, 256)])
def test_the_gpu_embeds_as_onnxruntime_does_on_the_cpu(served, rows, width):
    ids, mask = token_rows(rows, width, np.random.default_rng(rows))
    on_gpu = served.TorchEncoder(0)(ids, mask)
    on_cpu = served.OnnxEncoder(None)(ids, mask)
    assert on_gpu.dtype == np.float32 and on_gpu.shape == (rows, served.DIM)
    cosines = np.sum(on_gpu * on_cpu, axis=1) / np.linalg.norm(on_gpu, axis=1)
    assert cosines.min() >= AGREEMENT


@pytest.fixture
def built() -> Path:
    if os.environ.get("AIMESH_BUILT_TEXT_EMBEDDING"):
        return Path(os.environ["AIMESH_BUILT_TEXT_EMBEDDING"])
    if not models.is_current("text_embedding"):
        pytest.skip("no built text_embedding here (nor AIMESH_BUILT_TEXT_EMBEDDING)")
    return models.output("text_embedding")


def test_the_built_copy_embeds_on_the_gpu_as_sentence_transformers_does(built):
    served = text_embedding(built)
    model = served.TritonPythonModel()
    model.encode = served.TorchEncoder(0)
    reference = json.loads((built / "reference.json").read_text())
    ids, mask = served.Tokens(built / "tokenizer.json")(reference["sentences"])
    vectors = model.embed(ids, mask)                 # length-sorted chunks, as Triton runs them
    cosines = np.sum(vectors * np.array(reference["embeddings"], dtype=np.float32), axis=1)
    assert len(cosines) == len(reference["sentences"]) and cosines.min() >= AGREEMENT
