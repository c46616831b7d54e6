"""The chat language model in Triton (chat_lm, decoupled): messages in, text pieces out."""
from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncGenerator
from dataclasses import dataclass

import numpy as np
from opentelemetry import trace

from aimesh.search.v1 import search_pb2
from services import kit
from services.kit.inference import Triton

from .grounding import displayed
from .store import Turn

MODEL = "chat_lm"
MODEL_VERSION = "1"    # chat_lm has one version
SYSTEM = ("You are aimesh's movie assistant. Answer briefly, only about the films in the catalog "
          "given with each question, and name no other film.")


def lead(hits: list[search_pb2.SearchResult]) -> str:
    """How the answer begins: a suggestion of the best retrieved film, ending in "because", which
    the model goes on from (the engine continues a last assistant message), so the answer is about
    a film that exists and the model says why. Chosen by retrieval, not by a model of this size
    (under a grammar allowing only the retrieved titles it picked the same wrong one for most
    questions), and in prose (bench/chat_quality.py, 44 questions: a first line in the catalog's
    format led it to list invented entries in 11% of answers; a closed sentence left 45% of answers
    at that sentence alone; this, with the answer kept to one paragraph, 5% and none). Its genres
    are in the catalog entry just above, so the lead leaves them out: every token of a new
    question's prompt is read before its first token."""
    if not hits:
        return ""
    document = hits[0].document
    year = f" ({document.metadata['year']})" if document.metadata.get("year") else ""
    return f"I suggest {displayed(document.title)[-1]}{year}, because"


def entry(document: search_pb2.Document) -> str:
    """A catalog entry as the model reads it: "Title (year): genres" when the document has them
    (~7 tokens fewer than the indexed text, "Title (year). Genres: A, B."), else its text."""
    if not document.metadata.get("year"):
        return document.text
    kinds = sorted(key.split(":", 1)[1].lower() for key in document.metadata if key.startswith("genre:"))
    return f"{document.title} ({document.metadata['year']}){': ' + ', '.join(kinds) if kinds else ''}"


def catalog(hits: list[search_pb2.SearchResult]) -> str:
    """The retrieved entries as the model reads them, a line each (unnumbered: numbers cost a new
    question's prompt 6 tokens of ~76)."""
    return "\n".join(entry(h.document) for h in hits) or "(nothing found)"


def asked(question: str, entries: str) -> str:
    """A question as the model reads it: with the catalog entries retrieved for it (none for a
    turn stored before turns kept theirs)."""
    return f"Catalog:\n{entries}\n\n{question}" if entries else question


def messages(question: str, hits: list[search_pb2.SearchResult], earlier: list[Turn]) -> list[dict]:
    """The prompt: the system's role, the conversation so far (each question with the entries it
    was given), the question with its own, and the answer's first line. Everything before the
    question is text the engine read in the turns before, in the same place, so it goes on from
    there and reads only the new turn (with the latest entries in the system message, every turn
    read the whole conversation again: 454 tokens at a fifth turn, against ~100 now;
    bench/chat_conversations.py)."""
    prompt = [{"role": "system", "content": SYSTEM}]
    for turn in earlier:
        prompt += [{"role": "user", "content": asked(turn.question, turn.catalog)},
                   {"role": "assistant", "content": turn.answer}]
    prompt.append({"role": "user", "content": asked(question, catalog(hits))})
    if hits:
        prompt.append({"role": "assistant", "content": lead(hits)})
    return prompt


ONE_PARAGRAPH = ["\n"]     # an answer is one paragraph: lists are where invented titles came from
BUSY = "chat model busy"   # how chat_lm begins its error when its slots and queue are full


class ModelBusy(kit.Unavailable):
    """The model is up but has more answers running and waiting than it takes."""


@dataclass(frozen=True)
class Piece:
    text: str
    finish_reason: str = ""      # set on the last piece only
    prompt_tokens: int = 0       # the engine's count, on the last piece
    cached_prompt_tokens: int = 0   # of those, the ones it had read for an earlier prompt
    completion_tokens: int = 0   # the engine's count so far (a piece may hold several tokens)


def cited(hits: list[search_pb2.SearchResult]) -> dict[str, list[str]]:
    """chat_lm's CITED input: the titles the answer may quote, the years it may parenthesise."""
    return {"titles": [t for h in hits for t in displayed(h.document.title) if t],
            "years": [h.document.metadata["year"] for h in hits if h.document.metadata.get("year")]}


class ChatModel:
    def __init__(self, triton: Triton, temperature: float, full_length: bool = False):
        """full_length: every answer runs to its max_tokens, past the paragraph's end and the
        end-of-text token (a benchmark of decoding, bench/chat_latency.py, sets it)."""
        self.triton, self.temperature, self.full_length = triton, temperature, full_length

    async def generate(self, prompt: list[dict], max_tokens: int, deadline_s: float,
                       hits: list[search_pb2.SearchResult], span: trace.Span | None = None,
                       ) -> AsyncGenerator[Piece]:
        """The answer's pieces as Triton produces them; the last one carries the finish reason and
        token counts. The answer may quote only the retrieved titles (chat_lm's CITED grammar).
        ModelBusy when the model refuses for load, kit.Unavailable when it cannot answer."""
        inputs = {"MESSAGES": np.array([json.dumps(prompt).encode()], dtype=np.object_),
                  "MAX_TOKENS": np.array([max_tokens], dtype=np.int32),
                  "TEMPERATURE": np.array([self.temperature], dtype=np.float32),
                  "CITED": np.array([json.dumps(cited(hits)).encode()], dtype=np.object_)}
        if self.full_length:
            inputs["FULL_LENGTH"] = np.array([True])
        else:
            inputs["STOP"] = np.array([json.dumps(ONE_PARAGRAPH).encode()], dtype=np.object_)
        stream = self.triton.stream(MODEL, inputs, last_output="FINISH_REASON", timeout_s=deadline_s, under=span)
        async with contextlib.aclosing(stream):   # closing this closes the Triton call at once
            try:
                async for outputs in stream:
                    text = outputs["DELTA"][0].decode("utf-8", errors="replace")
                    made = int(outputs["COMPLETION_TOKENS"][0])
                    if "FINISH_REASON" not in outputs:
                        yield Piece(text, completion_tokens=made)
                        continue
                    yield Piece(text, outputs["FINISH_REASON"][0].decode(), int(outputs["PROMPT_TOKENS"][0]),
                                int(outputs["PROMPT_CACHED_TOKENS"][0]), made)
            except kit.Unavailable as why:
                if BUSY in why.message:
                    raise ModelBusy(BUSY) from why
                raise
