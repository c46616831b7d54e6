"""ChatService: answers grounded in the catalog, streamed as deltas.

The chat language model is not deployed yet (the models issue builds it), so each turn is a
retrieval-only answer from SearchService, streamed word by word and marked FALLBACK."""
from __future__ import annotations

import asyncio
import time

from aimesh.chat.v1 import chat_pb2, chat_pb2_grpc
from aimesh.common.v1 import common_pb2
from aimesh.search.v1 import search_pb2, search_pb2_grpc
from services import kit
from services.kit.audit import Audit

from .store import MIGRATIONS, ConversationStore

RETRIEVED = 3
NO_MODEL = "chat model not deployed: retrieval-only answer"


class Turn:
    """One question answered: the pieces to stream, then how it ended."""

    def __init__(self, hits: list[search_pb2.SearchResult], max_tokens: int):
        if hits:
            words = ("From the catalog: " + "; ".join(h.document.title for h in hits) + ".").split(" ")
        else:
            words = "I found nothing in the catalog for that.".split(" ")
        self.deltas = [w + " " for w in words[:max_tokens]]
        self.finish = (chat_pb2.FINISH_REASON_LENGTH if len(words) > max_tokens
                       else chat_pb2.FINISH_REASON_STOP)
        self.citations = chat_pb2.Citations(citations=[
            chat_pb2.Citation(document_id=h.document.document_id, title=h.document.title,
                              score=h.score) for h in hits])


class ChatServicer(chat_pb2_grpc.ChatServiceServicer):
    def __init__(self, conversations: ConversationStore, search: search_pb2_grpc.SearchServiceStub,
                 audit: Audit):
        self.conversations, self.search, self.audit = conversations, search, audit

    async def Ask(self, request, context):
        async for piece in self._turn(context, request.message, asyncio.Event()):
            # AskResponse is ChatResponse field for field, so the wire bytes carry over
            yield chat_pb2.AskResponse.FromString(piece.SerializeToString())

    async def Chat(self, request_iterator, context):
        """Turns run one at a time; a CancelTurn arriving mid-turn ends that turn early."""
        incoming: asyncio.Queue = asyncio.Queue()
        cancel = asyncio.Event()

        async def read():
            async for message in request_iterator:
                if message.WhichOneof("kind") == "cancel":
                    cancel.set()
                else:
                    await incoming.put(message.message)
            await incoming.put(None)

        reader = asyncio.ensure_future(read())
        try:
            while (message := await incoming.get()) is not None:
                cancel.clear()
                async for piece in self._turn(context, message, cancel):
                    yield piece
        finally:
            reader.cancel()

    async def _turn(self, context, message: chat_pb2.UserMessage, cancel: asyncio.Event):
        who = kit.caller(context)
        text = kit.validate.text(message, "text", max_len=4000, parent="message")
        max_tokens = kit.validate.in_range(message, "max_tokens", 1, 512, default=256,
                                           parent="message")
        started = time.perf_counter()
        conversation = await self.conversations.open(who.user_id, message.conversation_id)
        if conversation is None:
            raise kit.NotFound(f"no conversation {message.conversation_id} for this user")
        found = await self.search.Search(search_pb2.SearchRequest(query=text, page_size=RETRIEVED))
        turn = Turn(list(found.results), max_tokens)
        sent, finish = [], turn.finish
        for delta in turn.deltas:
            if cancel.is_set():
                finish = chat_pb2.FINISH_REASON_CANCELLED
                break
            sent.append(delta)
            yield chat_pb2.ChatResponse(delta=chat_pb2.TokenDelta(text=delta))
            await asyncio.sleep(0)   # let a cancel that arrived be read between deltas
        yield chat_pb2.ChatResponse(citations=turn.citations)
        turn_id = await self.conversations.add_turn(
            conversation, text, "".join(sent), chat_pb2.FinishReason.Name(finish), "fallback")
        await self.audit.record(
            user_id=who.user_id, model="retrieval", version="", model_input=text,
            output_ids=[c.document_id for c in turn.citations.citations],
            latency_s=time.perf_counter() - started, source="SOURCE_FALLBACK")
        yield chat_pb2.ChatResponse(end=chat_pb2.TurnEnd(
            conversation_id=conversation, turn_id=turn_id, finish_reason=finish,
            usage=chat_pb2.Usage(prompt_tokens=len(text.split()), completion_tokens=len(sent)),
            source=common_pb2.SOURCE_FALLBACK, fallback_reason=NO_MODEL))


async def setup(app: kit.App) -> list[kit.Binding]:
    conversations = ConversationStore(await app.database(MIGRATIONS))
    search = search_pb2_grpc.SearchServiceStub(app.channel(app.config.mesh_address, timeout_s=3))
    audit = Audit(await app.events(), "chat")
    return [kit.Binding("aimesh.chat.v1.ChatService", chat_pb2_grpc.add_ChatServiceServicer_to_server,
                        ChatServicer(conversations, search, audit))]
