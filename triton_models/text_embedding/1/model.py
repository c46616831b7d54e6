"""text_embedding: all-MiniLM-L6-v2. TEXT (one string per row) -> EMBEDDING (fp32 [384], unit length).

One file, two roles, chosen by the config it is loaded with:
- alone (config.pbtxt, the local runner): tokenises (the built tokenizer.json: truncation at 256
  tokens, padding to the longest row), then runs the built graph, which pools and normalises. On a
  CPU instance that is onnxruntime (model.onnx); on a GPU instance, torch fp16 (encoder.pt) where a
  CUDA torch is installed, else onnxruntime with its CUDA provider where that is installed.
- as the tokenizer of the Triton image's ensemble (tokenizer.pbtxt: outputs input_ids and
  attention_mask, no EMBEDDING): tokenises only; the graph runs next on Triton's onnxruntime
  backend (encoder.pbtxt, ensemble.pbtxt; put together by aimesh.triton.assemble(image=True)).
The files come from `aimesh models build` through the `artifact` link beside this file.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils
from tokenizers import Tokenizer

ARTIFACT = Path(__file__).parent / "artifact"
DIM = 384
# Rows x tokens per run of the graph. Rows run shortest first in chunks under this budget, so a
# long text does not pad a whole batch of short ones to its length (attention cost grows with it).
TOKENS_PER_RUN = 8192
# As the ensemble's tokenizer, each request's rows are padded to a width of this many tokens times
# a power of two: Triton's dynamic batcher merges only requests of one shape, so requests of similar
# length share a run of the graph, at most twice as wide as they need.
NARROWEST = 16


class Tokens:
    """Texts -> input_ids, attention_mask (int64 [rows, longest]), by the built tokenizer.json."""

    def __init__(self, path: Path):
        self.tokenizer = Tokenizer.from_file(str(path))
        self.pad_id = self.tokenizer.padding["pad_id"]
        self.longest = self.tokenizer.truncation["max_length"]

    def __call__(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        encodings = self.tokenizer.encode_batch(texts)      # padded (right) to the longest
        return (np.array([e.ids for e in encodings], dtype=np.int64),
                np.array([e.attention_mask for e in encodings], dtype=np.int64))

    def bucketed(self, input_ids: np.ndarray, attention_mask: np.ndarray):
        """The same tokens, padded (masked out) to the narrowest bucket width that holds them."""
        used = int(attention_mask.sum(axis=1).max(initial=1))
        width = min(self.longest, max(NARROWEST, 1 << (used - 1).bit_length()))
        pad = ((0, 0), (0, width - used))
        return (np.pad(input_ids[:, :used], pad, constant_values=self.pad_id),
                np.pad(attention_mask[:, :used], pad, constant_values=0))


class OnnxEncoder:
    def __init__(self, device_id: int | None):
        import onnxruntime
        providers = ["CPUExecutionProvider"]
        if device_id is not None and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": device_id}))
        options = onnxruntime.SessionOptions()
        # Idle intra-op threads sleep rather than spin: the cores are shared with the mesh.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = onnxruntime.InferenceSession(str(ARTIFACT / "model.onnx"), options,
                                                    providers=providers)
        self.device = self.session.get_providers()[0]

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        return self.session.run(None, {"input_ids": input_ids, "attention_mask": attention_mask})[0]


class TorchEncoder:
    """The fp16 TorchScript copy on one CUDA device (the build traces it free of device
    constants, so loading it there puts all of it there)."""

    def __init__(self, device_id: int):
        import torch
        self.torch = torch
        self.device = torch.device("cuda", device_id)
        self.module = torch.jit.load(str(ARTIFACT / "encoder.pt"), map_location=self.device).eval()

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        torch = self.torch
        with torch.inference_mode():
            vectors = self.module(torch.from_numpy(input_ids).to(self.device),
                                  torch.from_numpy(attention_mask).to(self.device))
        return vectors.cpu().numpy()          # fp32: the graph pools in fp32


def cuda_torch() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


# "[CLS] hello world [SEP] [PAD]": what a GPU engine must embed as onnxruntime does before it serves.
PROBE = (np.array([[101, 7592, 2088, 102, 0]], dtype=np.int64),
         np.array([[1, 1, 1, 1, 0]], dtype=np.int64))
MIN_PROBE_COSINE = 0.999         # torch fp16 against onnxruntime fp32


def encoder(args) -> TorchEncoder | OnnxEncoder:
    """The engine for the instance that Triton's `args` describe (also used by bench/): on a GPU
    torch fp16 when it runs and agrees with onnxruntime, else onnxruntime (its CUDA provider
    where installed). A GPU engine that fails serves nothing wrong: the model still loads."""
    on_gpu = args["model_instance_kind"] == "GPU"
    device_id = int(args["model_instance_device_id"]) if on_gpu else None
    encode = OnnxEncoder(device_id)
    if on_gpu and cuda_torch():
        try:
            encode = agreeing(TorchEncoder(device_id), encode)
        except Exception as failure:   # noqa: BLE001 (e.g. a TorchScript copy traced on a CPU)
            print(f"text_embedding: torch on GPU {device_id} not used: {failure}", flush=True)
    # Into Triton's log: which engine serves, where.
    print(f"text_embedding: {type(encode).__name__} on "
          f"{'GPU ' + str(device_id) if on_gpu else 'CPU'}", flush=True)
    return encode


def agreeing(candidate, reference):
    """The candidate engine, once it embeds the probe as the reference does."""
    a, b = candidate(*PROBE)[0], reference(*PROBE)[0]
    cosine = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
    if not cosine >= MIN_PROBE_COSINE:
        raise RuntimeError(f"its probe vector is at cosine {cosine:.4f} from onnxruntime's")
    return candidate


class TritonPythonModel:
    def initialize(self, args):
        self.tokens = Tokens(ARTIFACT / "tokenizer.json")
        outputs = {o["name"] for o in json.loads(args["model_config"])["output"]}
        self.tokenize_only = "EMBEDDING" not in outputs     # the ensemble's first step
        if self.tokenize_only:
            print("text_embedding: tokenizer of the ensemble", flush=True)
            return
        self.encode = encoder(args)

    def execute(self, requests):
        # Dynamic batching hands over several requests at once, each with one or more rows:
        # tokenise (and embed) all their rows together, then hand each request its own.
        texts, counts = [], []
        for request in requests:
            rows = pb_utils.get_input_tensor_by_name(request, "TEXT").as_numpy().reshape(-1)
            texts.extend(t.decode("utf-8", "replace") if isinstance(t, bytes) else str(t)
                         for t in rows)
            counts.append(len(rows))
        input_ids, attention_mask = self.tokens(texts)
        if not self.tokenize_only:
            embeddings = self.embed(input_ids, attention_mask)
        responses, start = [], 0
        for count in counts:
            rows = slice(start, start + count)
            if self.tokenize_only:
                ids, mask = self.tokens.bucketed(input_ids[rows], attention_mask[rows])
                outputs = [pb_utils.Tensor("input_ids", ids),
                           pb_utils.Tensor("attention_mask", mask)]
            else:
                outputs = [pb_utils.Tensor("EMBEDDING", embeddings[rows])]
            responses.append(pb_utils.InferenceResponse(output_tensors=outputs))
            start += count
        return responses

    def embed(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        lengths = attention_mask.sum(axis=1)
        embeddings = np.empty((len(input_ids), DIM), dtype=np.float32)
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
