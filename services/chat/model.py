"""The chat language model in Triton (chat_lm, decoupled): messages in, text pieces out."""
from __future__ import annotations

import contextlib
import json
from typing import AsyncIterator

import numpy as np

from aimesh.search.v1 import search_pb2
from services.kit.inference import Triton

MODEL = "chat_lm"
TEMPERATURE = 0.7   # greedy decoding loops on a model this small
SYSTEM = ("You are aimesh's movie assistant. Answer briefly and helpfully. Prefer the films "
          "from the catalog listed below; do not invent facts about them.")


def messages(question: str, hits: list[search_pb2.SearchResult],
             earlier: list[tuple[str, str]]) -> list[dict]:
    """The prompt: the system's role with the retrieved catalog entries, the conversation so far."""
    catalog = "\n".join(f"- {h.document.title}: {h.document.text}" for h in hits) or "- (nothing found)"
    prompt = [{"role": "system", "content": f"{SYSTEM}\nCatalog:\n{catalog}"}]
    for asked, answered in earlier:
        prompt += [{"role": "user", "content": asked}, {"role": "assistant", "content": answered}]
    return prompt + [{"role": "user", "content": question}]


class ChatModel:
    def __init__(self, triton: Triton):
        self.triton = triton

    async def generate(self, prompt: list[dict], max_tokens: int,
                       deadline_s: float) -> AsyncIterator[tuple[str, str]]:
        """(piece, finish reason) as Triton produces them; the reason is "" until the last piece.
        kit.Unavailable when the model cannot answer."""
        inputs = {"MESSAGES": np.array([json.dumps(prompt).encode()], dtype=np.object_),
                  "MAX_TOKENS": np.array([max_tokens], dtype=np.int32),
                  "TEMPERATURE": np.array([TEMPERATURE], dtype=np.float32)}
        stream = self.triton.stream(MODEL, inputs, last_output="FINISH_REASON", timeout_s=deadline_s)
        async with contextlib.aclosing(stream):   # closing this closes the Triton call at once
            async for outputs in stream:
                finish = outputs.get("FINISH_REASON")
                yield (outputs["DELTA"][0].decode("utf-8", errors="replace"),
                       "" if finish is None else finish[0].decode())
