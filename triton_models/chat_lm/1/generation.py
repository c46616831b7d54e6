"""SmolLM2-135M-Instruct through llama.cpp's own server engine (xllamacpp): chat messages in, text
pieces out, several generations decoding together (continuous batching over `slots`).

Kept free of Triton so the benchmark can call exactly this code in-process and compare it with the
same code served by Triton (bench/chat_latency.py).
"""
from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import xllamacpp

# Greedy decoding loops on a model this small; mild sampling with a repeat penalty does not.
DEFAULT_TEMPERATURE = 0.7
REPEAT_PENALTY = 1.1


@dataclass(frozen=True)
class Settings:
    slots: int = 8                  # generations decoding together
    context_per_slot: int = 2048    # tokens each generation may hold: prompt and answer
    threads: int = 2
    gpu_layers: int = 0             # layers offloaded to a GPU (-1: all) with a CUDA build
    # llama.cpp keeps finished prompts' state in host memory to reuse their prefixes (a
    # conversation's, when another chat took its slot): bounded here, as its default (8 GiB) grew
    # chat_lm by ~10 MB a minute in the soak
    prompt_cache_mib: int = 128
    # prompt tokens read in one step: a chat's first token then comes once its own prompt is read,
    # not once every prompt that arrived with it is (8 at once: the median first token ~35% sooner)
    prompt_batch: int = 128


@dataclass(frozen=True)
class Result:
    finish_reason: str        # stop | length | cancelled
    prompt_tokens: int        # counted by the engine's tokenizer
    completion_tokens: int
    cached_tokens: int = 0    # of prompt_tokens, those it went on from (read for an earlier prompt)


def cited_only(titles: list[str], years: list[str]) -> str:
    """A grammar (llama.cpp's GBNF) for an answer that may quote only these titles and write a year
    in parentheses only as one of these years; any other text is free. Sampling then cannot
    present an invented film as "Title" or Title (1999)."""
    def choice(options) -> str:
        return " | ".join(json.dumps(o) for o in sorted(set(options))) or '"\\u0000"'
    return ("root ::= piece*\n"
            'piece ::= [^"(] | "\\"" title "\\"" | "(" year ")" | "(" [^0-9"(]\n'
            f"title ::= {choice(titles)}\n"
            f"year ::= {choice(years)}\n")


class PromptTooLong(ValueError):
    """Even the system prompt and the question alone leave no room for an answer."""


class Engine:
    """One model in memory serving `slots` generations at once; every method is thread-safe."""

    def __init__(self, weights: Path, settings: Settings = Settings()):
        """`weights`: the GGUF `aimesh models build` makes (aimesh/models/chat_lm.py)."""
        params = xllamacpp.CommonParams()
        params.model.path = str(weights)
        params.n_parallel = settings.slots
        params.n_ctx = settings.slots * settings.context_per_slot   # split evenly between slots
        params.cpuparams.n_threads = settings.threads
        params.cpuparams_batch.n_threads = settings.threads
        params.n_gpu_layers = settings.gpu_layers
        params.cache_ram_mib = settings.prompt_cache_mib
        params.n_batch = params.n_ubatch = settings.prompt_batch
        params.verbosity = -1     # llama.cpp logs every slot's timings otherwise
        self.settings = settings
        self.server = xllamacpp.Server(params)

    # --- prompts that fit ----------------------------------------------------------------------

    def _engine_http(self, path: str, body: dict) -> dict:
        # The tokenizer and chat template live in the engine; it answers these two on its own
        # loopback listener (no Python API for them), in about a millisecond.
        request = urllib.request.Request(self.server.listening_address.rstrip("/") + path,
                                         data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as reply:
            return json.loads(reply.read())

    def count(self, messages: list[dict]) -> int:
        """Prompt tokens of these messages once the GGUF's chat template has formatted them."""
        prompt = self._engine_http("/apply-template", {"messages": messages})["prompt"]
        return len(self._engine_http("/tokenize", {"content": prompt, "add_special": True})["tokens"])

    def fit(self, messages: list[dict], max_tokens: int) -> list[dict]:
        """The messages with the oldest earlier turns dropped until prompt and answer fit a slot;
        the system prompt and the question (the last user message, and an answer's beginning
        after it) always stay."""
        budget = self.settings.context_per_slot - min(max_tokens, self.settings.context_per_slot // 2)
        system = [m for m in messages[:1] if m["role"] == "system"]
        asked = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=len(messages) - 1)
        earlier, question = messages[len(system):asked], messages[asked:]
        while True:
            kept = system + earlier + question
            used = self.count(kept)
            if used <= budget:
                return kept
            if not earlier:
                raise PromptTooLong(f"the system prompt and the question are {used} tokens; "
                                    f"at most {budget} fit with room for the answer")
            earlier = earlier[1:]

    # --- generation ----------------------------------------------------------------------------

    def generate(self, messages: list[dict], max_tokens: int, on_piece: Callable[[str], bool], *,
                 temperature: float = DEFAULT_TEMPERATURE, stop: list[str] | None = None,
                 seed: int | None = None, grammar: str | None = None, full_length: bool = False,
                 ) -> Result:
        """Generate the answer, handing each text piece to on_piece as the engine makes it; blocks
        until the answer ends. on_piece returns True to stop the generation there (a cancel):
        the engine frees the slot at its next token. A greedy answer (temperature 0) depends on
        its prompt alone: its prompt is read afresh, as resuming from another prompt's cached prefix
        changes the arithmetic enough to change a greedy text."""
        request = {"messages": messages, "max_tokens": max_tokens, "temperature": temperature,
                   "repeat_penalty": REPEAT_PENALTY, "stop": stop or [], "stream": True,
                   "stream_options": {"include_usage": True}, "cache_prompt": temperature > 0}
        if seed is not None:
            request["seed"] = seed
        if grammar:
            request["grammar"] = grammar
        if full_length:
            request["ignore_eos"] = True
        state = {"pieces": 0, "finish": None, "usage": None, "error": None, "cancelled": False}

        def on_chunk(chunk: dict) -> bool:
            if "error" in chunk:
                state["error"] = chunk["error"]
                return True
            if chunk.get("usage"):
                state["usage"] = chunk["usage"]
            for choice in chunk.get("choices", ()):
                text = (choice.get("delta") or {}).get("content") or ""
                if text:
                    state["pieces"] += 1
                    if on_piece(text):
                        state["cancelled"] = True
                        return True
                state["finish"] = choice.get("finish_reason") or state["finish"]
            return False

        self.server.handle_chat_completions(request, on_chunk)
        if state["error"]:
            error = state["error"]
            if error.get("type") == "exceed_context_size_error":
                raise PromptTooLong(error.get("message", "the prompt exceeds the context"))
            raise RuntimeError(error.get("message", str(error)))
        usage = state["usage"] or {}
        if state["cancelled"]:
            # A stopped stream sends no usage: each streamed piece is one token of llama.cpp's.
            return Result("cancelled", self.count(messages), state["pieces"])
        return Result(state["finish"] or "stop", usage.get("prompt_tokens", 0),
                      usage.get("completion_tokens", state["pieces"]),
                      (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0))
