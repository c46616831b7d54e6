"""Which engine text_embedding's model.py serves with on a GPU instance: torch fp16 only when it
runs and agrees with onnxruntime, otherwise onnxruntime, so a broken GPU engine never fails the
model or serves wrong vectors. torch and CUDA are stood in for; onnxruntime and the built ONNX
graph are real."""
import numpy as np
import pytest

from aimesh import models
from tests.unit.models.served import text_embedding

GPU = {"model_instance_kind": "GPU", "model_instance_device_id": "0"}


@pytest.fixture
def served():
    """triton_models/text_embedding/1/model.py on the built artifact, with CUDA 'available'."""
    module = text_embedding(models.output("text_embedding"))
    module.cuda_torch = lambda: True
    return module


def test_a_torch_engine_that_agrees_serves(served):
    class Agreeing:   # what a working fp16 copy gives: the same vectors, rounded
        def __init__(self, device_id):
            self.reference = served.OnnxEncoder(None)

        def __call__(self, ids, mask):
            return self.reference(ids, mask).astype(np.float16).astype(np.float32)

    served.TorchEncoder = Agreeing
    assert isinstance(served.encoder(GPU), Agreeing)


@pytest.mark.parametrize("failure", ["cannot load", "wrong vectors"])
def test_a_torch_engine_that_fails_leaves_onnxruntime_serving(served, failure, capsys):
    class Broken:
        def __init__(self, device_id):
            if failure == "cannot load":
                raise RuntimeError("Expected all tensors to be on the same device")

        def __call__(self, ids, mask):
            return np.random.default_rng(0).normal(size=(len(ids), served.DIM)).astype(np.float32)

    served.TorchEncoder = Broken
    engine = served.encoder(GPU)
    assert isinstance(engine, served.OnnxEncoder)
    assert "torch on GPU 0 not used" in capsys.readouterr().out
    vectors = engine(*served.PROBE)
    assert vectors.shape == (1, served.DIM) and abs(np.linalg.norm(vectors) - 1) < 1e-4
