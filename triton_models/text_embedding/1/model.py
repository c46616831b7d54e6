"""text_embedding: all-MiniLM-L6-v2. TEXT (one string per row) -> EMBEDDING (fp32 [384], unit length).

Tokenises here (the built tokenizer.json: truncation at 256 tokens, padding to the longest row of
the batch), then runs the built graph, which pools and normalises. On a CPU instance that is
onnxruntime (model.onnx); on a GPU instance, torch fp16 (encoder.pt) where a CUDA torch is
installed, else onnxruntime with its CUDA provider where that is installed. The files come from
`aimesh models build` through the `artifact` link beside this file.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils
from tokenizers import Tokenizer

ARTIFACT = Path(__file__).parent / "artifact"
DIM = 384
# Rows x tokens per run of the graph. Rows run shortest first in chunks under this budget, so a
# long text does not pad a whole batch of short ones to its length (attention cost grows with it).
TOKENS_PER_RUN = 8192


class OnnxEncoder:
    def __init__(self, device_id: int | None):
        import onnxruntime
        providers = ["CPUExecutionProvider"]
        if device_id is not None and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": device_id}))
        self.session = onnxruntime.InferenceSession(str(ARTIFACT / "model.onnx"), providers=providers)
        self.device = self.session.get_providers()[0]

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        return self.session.run(None, {"input_ids": input_ids, "attention_mask": attention_mask})[0]


class TorchEncoder:
    """The TorchScript copy in fp16 on one CUDA device."""

    def __init__(self, device_id: int):
        import torch
        self.torch = torch
        self.device = torch.device("cuda", device_id)
        self.module = torch.jit.load(str(ARTIFACT / "encoder.pt"), map_location=self.device)
        self.module = self.module.half().eval()

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        torch = self.torch
        with torch.inference_mode():
            vectors = self.module(torch.from_numpy(input_ids).to(self.device),
                                  torch.from_numpy(attention_mask).to(self.device))
        return vectors.float().cpu().numpy()


def cuda_torch() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


class TritonPythonModel:
    def initialize(self, args):
        self.tokenizer = Tokenizer.from_file(str(ARTIFACT / "tokenizer.json"))
        on_gpu = args["model_instance_kind"] == "GPU"
        device_id = int(args["model_instance_device_id"]) if on_gpu else None
        self.encode = (TorchEncoder(device_id) if on_gpu and cuda_torch()
                       else OnnxEncoder(device_id))
        # Into Triton's log: which engine serves, where.
        print(f"text_embedding: {type(self.encode).__name__} on "
              f"{'GPU ' + str(device_id) if on_gpu else 'CPU'}", flush=True)

    def execute(self, requests):
        # Dynamic batching hands over several requests at once, each with one or more rows:
        # embed all their rows together, then hand each request its own.
        texts, counts = [], []
        for request in requests:
            rows = pb_utils.get_input_tensor_by_name(request, "TEXT").as_numpy().reshape(-1)
            texts.extend(t.decode("utf-8", "replace") if isinstance(t, bytes) else str(t)
                         for t in rows)
            counts.append(len(rows))
        embeddings = self.embed(texts)
        responses, start = [], 0
        for count in counts:
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("EMBEDDING", embeddings[start:start + count])]))
            start += count
        return responses

    def embed(self, texts: list[str]) -> np.ndarray:
        encodings = self.tokenizer.encode_batch(texts)      # padded (right) to the longest
        input_ids = np.array([e.ids for e in encodings], dtype=np.int64)
        attention_mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        lengths = attention_mask.sum(axis=1)
        embeddings = np.empty((len(texts), DIM), dtype=np.float32)
        for rows in chunks(np.argsort(lengths, kind="stable"), lengths):
            width = int(lengths[rows].max())                # the padding beyond is masked anyway
            embeddings[rows] = self.encode(input_ids[rows, :width], attention_mask[rows, :width])
        return embeddings


def chunks(order: np.ndarray, lengths: np.ndarray) -> list[np.ndarray]:
    """Consecutive runs of `order` (shortest first) whose rows x longest length fit the budget."""
    runs, start = [], 0
    for end in range(1, len(order) + 1):
        if end == len(order) or (end + 1 - start) * lengths[order[end]] > TOKENS_PER_RUN:
            runs.append(order[start:end])
            start = end
    return runs
