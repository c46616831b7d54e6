"""text_embedding_ids, a model for bench/gpu_throughput.py only: the served text_embedding, fed
token ids instead of text.

INPUT_IDS, ATTENTION_MASK (int64, one row per request, padded on the right) -> EMBEDDING (fp32
[384]). Token ids because on the GPU machine numpy is 2.x, which crashes string tensors in this
Triton's python backend. The benchmark copies this file as model.py into its own model repository,
beside a copy of triton_models/text_embedding/1/model.py named served.py and the `artifact` folder
that one reads, so the engine (torch fp16 on a GPU, onnxruntime on the CPU) and the length-sorted
chunking are the served model's own.
"""
import sys
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

sys.path.insert(0, str(Path(__file__).parent))      # served.py

import served  # noqa: E402


class TritonPythonModel(served.TritonPythonModel):
    def initialize(self, args):
        self.encode = served.encoder(args)           # no tokenizer: ids come in

    def execute(self, requests):
        # Dynamic batching hands over several requests of one width (the benchmark pads every
        # request alike): run all their rows together, then hand each request its own.
        ids = [pb_utils.get_input_tensor_by_name(r, "INPUT_IDS").as_numpy() for r in requests]
        masks = [pb_utils.get_input_tensor_by_name(r, "ATTENTION_MASK").as_numpy() for r in requests]
        embeddings = self.embed(np.concatenate(ids), np.concatenate(masks))
        responses, start = [], 0
        for rows in ids:
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("EMBEDDING", embeddings[start:start + len(rows)])]))
            start += len(rows)
        return responses
