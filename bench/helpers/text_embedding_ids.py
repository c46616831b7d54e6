"""text_embedding_ids, a model for bench/gpu_throughput.py only: the served text_embedding, fed
token ids instead of text.

INPUT_IDS, ATTENTION_MASK (int64, one row per request, padded on the right) -> EMBEDDING (fp32
[384]). On the GPU machine numpy is 2.x, which this Triton's python backend (built for numpy 1)
gets wrong: string tensors crash it, and numbers it reads through numpy come out empty. So the
tensors here are token ids, passed in and out through DLPack under numpy 2 (which does not go
through numpy's C API there; under numpy 1 that crashes the stub, so numpy 1 keeps as_numpy).

The benchmark copies this file as model.py into its own model repository, beside a copy of
triton_models/text_embedding/1/model.py named served.py and the `artifact` folder that one reads,
so the engine (torch fp16 on a GPU, onnxruntime on the CPU) and the length-sorted chunking are the
served model's own.
"""
import sys
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

sys.path.insert(0, str(Path(__file__).parent))      # served.py

import served  # noqa: E402

NUMPY_2 = int(np.__version__.split(".")[0]) >= 2


def tensor_in(request, name: str) -> np.ndarray:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return np.from_dlpack(tensor) if NUMPY_2 else tensor.as_numpy()


def tensor_out(name: str, values: np.ndarray):
    return pb_utils.Tensor.from_dlpack(name, values) if NUMPY_2 else pb_utils.Tensor(name, values)


class TritonPythonModel(served.TritonPythonModel):
    def initialize(self, args):
        self.encode = served.encoder(args)           # no tokenizer: ids come in

    def execute(self, requests):
        # Dynamic batching hands over several requests of one width (the benchmark pads every
        # request alike): run all their rows together, then hand each request its own.
        ids = [tensor_in(r, "INPUT_IDS") for r in requests]
        masks = [tensor_in(r, "ATTENTION_MASK") for r in requests]
        embeddings = self.embed(np.concatenate(ids), np.concatenate(masks))
        responses, start = [], 0
        for rows in ids:
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                tensor_out("EMBEDDING", embeddings[start:start + len(rows)])]))
            start += len(rows)
        return responses
