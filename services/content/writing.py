"""What each step of the saga does, and its compensation: check text with the moderation model,
write with the chat model (both in Triton, through the mesh), index in search-svc on the owner's
behalf. Each is idempotent: a step run again after a crash has the same effect once."""
from __future__ import annotations

import json
import re

import numpy as np

from aimesh.search.v1 import search_pb2, search_pb2_grpc
from services import kit
from services.kit.clients import as_workload
from services.kit.inference import Triton

from .store import Content

CHAT_MODEL = "chat_lm"
MODERATION_MODEL = "moderation"
MAX_TOKENS = 200
ONE_PARAGRAPH = ["\n\n"]
SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")
MODERATED_SENTENCES = 16   # the moderation model's largest batch; a paragraph has fewer
WHAT = {"review": "a short review (one paragraph) of the film or films it names",
        "blurb": "a one-paragraph blurb for the back of the film's box",
        "story": "a very short story (one paragraph) on its theme"}


class Rejected(Exception):
    """The text is not safe to publish: the saga ends REJECTED."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def document_id(content_id: str) -> str:
    return f"content-{content_id}"


class Writer:
    def __init__(self, triton: Triton, search: search_pb2_grpc.SearchServiceAsyncStub, temperature: float):
        self.triton, self.search, self.temperature = triton, search, temperature

    async def check(self, what: str, text: str, timeout_s: float) -> str:
        """The moderation model's verdict on `text`, sentence by sentence (the model reads a
        sentence's worth and was shown single sentences): an outcome in words, or Rejected when
        any sentence is unsafe."""
        sentences = [s for s in SENTENCE_END.split(text) if s.strip()][:MODERATED_SENTENCES] or [text]
        outputs = await self.triton.infer(
            MODERATION_MODEL, {"TEXT": np.array([[s.encode()] for s in sentences], dtype=np.object_)},
            timeout_s=timeout_s)
        worst = int(np.argmax(outputs["UNSAFE"][:, 0]))
        score, category = float(outputs["UNSAFE"][worst][0]), outputs["CATEGORY"][worst][0].decode()
        if category:
            raise Rejected(f"the {what} was judged unsafe ({category.replace('_', ' ')}, score {score:.2f}):"
                           f" \"{sentences[worst].strip()[:120]}\"")
        return f"safe ({len(sentences)} sentences, highest unsafe score {score:.2f})"

    async def generate(self, content: Content, timeout_s: float) -> tuple[str, str]:
        """The text the prompt asks for, and an outcome in words (its length in tokens)."""
        prompt = [{"role": "system", "content": "You are aimesh's film writer. Write what is asked, "
                                                "in plain prose, and nothing else."},
                  {"role": "user", "content": f"Write {WHAT[content.kind]}. Subject: {content.prompt}"}]
        inputs = {"MESSAGES": np.array([json.dumps(prompt).encode()], dtype=np.object_),
                  "MAX_TOKENS": np.array([MAX_TOKENS], dtype=np.int32),
                  "TEMPERATURE": np.array([self.temperature], dtype=np.float32),
                  "STOP": np.array([json.dumps(ONE_PARAGRAPH).encode()], dtype=np.object_)}
        pieces, tokens = [], 0
        async for outputs in self.triton.stream(CHAT_MODEL, inputs, last_output="FINISH_REASON",
                                                timeout_s=timeout_s):
            pieces.append(outputs["DELTA"][0].decode("utf-8", errors="replace"))
            if "COMPLETION_TOKENS" in outputs:
                tokens = int(outputs["COMPLETION_TOKENS"][0])
        text = "".join(pieces).strip()
        if not text:
            raise kit.Unavailable("the model wrote nothing")
        return text, f"{tokens} tokens written"

    async def index(self, content: Content, text: str, timeout_s: float) -> str:
        """Upserted by id: indexing twice leaves one entry."""
        document = search_pb2.Document(
            document_id=document_id(content.id), title=content.prompt[:120], text=text,
            metadata={"source": "content", "kind": content.kind}, owner_id=content.owner)
        with as_workload():
            await self.search.IndexDocuments(search_pb2.IndexDocumentsRequest(documents=[document]),
                                             timeout=timeout_s)
        return f"indexed as {document.document_id}, visible to its owner only"

    async def unindex(self, content: Content, timeout_s: float) -> str:
        """Removing an entry that is not there is not an error. As content-svc itself, also when
        its owner's DeleteContent asks for it (search-svc lets users delete nothing)."""
        with as_workload():
            reply = await self.search.DeleteDocument(
                search_pb2.DeleteDocumentRequest(document_id=document_id(content.id)), timeout=timeout_s)
        return "removed from search" if reply.deleted else "was not in search"
