"""ChatService: answers grounded in the catalog, streamed token by token.

Each turn retrieves catalog entries from SearchService (east-west through the gateway), asks the
chat model in Triton with them and the conversation so far, and streams its pieces back as Triton
produces them. When the model cannot answer, the turn is a retrieval-only answer, marked FALLBACK.
A cancel or a disconnect cancels the Triton call, which stops the generation."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

import grpc
from opentelemetry import trace

from aimesh.chat.v1 import chat_pb2, chat_pb2_grpc
from aimesh.common.v1 import common_pb2
from aimesh.search.v1 import search_pb2, search_pb2_grpc
from services import kit
from services.kit.audit import Audit
from services.kit.telemetry import FALLBACKS

from .grounding import invented, names
from .model import BUSY, MODEL, MODEL_VERSION, ChatModel, ModelBusy, catalog, lead, messages
from .quota import AnswersInProgress
from .store import COUNT, MIGRATIONS, PRUNE, ConversationStore, Turn

log = logging.getLogger("aimesh.chat")
TRACER = trace.get_tracer("aimesh.chat")

RETRIEVED = 3
EARLIER_TURNS = 3          # a resumed conversation's last 3 to 5 turns: ConversationStore.window
TURN_DEADLINE_S = 60.0     # the longest one turn may generate
FINISH = {"stop": chat_pb2.FINISH_REASON_STOP, "length": chat_pb2.FINISH_REASON_LENGTH,
          "cancelled": chat_pb2.FINISH_REASON_CANCELLED}


def retrieval_only(hits: list[search_pb2.SearchResult], max_tokens: int, *,
                   searched: bool = True) -> tuple[list[str], chat_pb2.FinishReason]:
    """The fallback answer's pieces (word by word) and how it ends."""
    if hits:
        answer = "From the catalog: " + "; ".join(h.document.title for h in hits) + "."
    elif searched:
        answer = "I found nothing in the catalog for that."
    else:
        answer = "The assistant and the catalog search are unavailable right now; please try again soon."
    words = answer.split(" ")
    finish = chat_pb2.FINISH_REASON_LENGTH if len(words) > max_tokens else chat_pb2.FINISH_REASON_STOP
    return [w + " " for w in words[:max_tokens]], finish


def delta(text: str) -> chat_pb2.ChatResponse:
    return chat_pb2.ChatResponse(delta=chat_pb2.TokenDelta(text=text))


def check(answer: str, hits: list[search_pb2.SearchResult]) -> tuple[chat_pb2.Grounding, str]:
    """The answer's grounding, and the correction to append when it is not grounded: an answer
    that presents a title outside the citations, or names none of them, is told so in plain words
    and given the best cited entry."""
    if not hits:
        return chat_pb2.GROUNDING_NONE, ""
    cited = [h.document.title for h in hits]
    outside = invented(answer, cited)
    if not outside and any(names(answer, title) for title in cited):
        return chat_pb2.GROUNDING_CITED, ""
    said = f"{', '.join(outside)} {'is' if len(outside) == 1 else 'are'} not in the catalog. " if outside else ""
    return chat_pb2.GROUNDING_CORRECTED, f"\n\n({said}From the catalog: {hits[0].document.text})"


class ChatServicer(chat_pb2_grpc.ChatServiceServicer):
    def __init__(self, conversations: ConversationStore, search: search_pb2_grpc.SearchServiceAsyncStub,
                 model: ChatModel, audit: Audit, in_progress: AnswersInProgress):
        self.conversations, self.search, self.model, self.audit = conversations, search, model, audit
        self.in_progress = in_progress

    async def Ask(self, request: chat_pb2.AskRequest,
                 context: grpc.aio.ServicerContext) -> AsyncIterator[chat_pb2.AskResponse]:
        async for piece in self._turn(context, request.message, asyncio.Event(), "chat.Ask"):
            # AskResponse is ChatResponse field for field, so the wire bytes carry over
            yield chat_pb2.AskResponse.FromString(piece.SerializeToString())

    async def Chat(self, request_iterator: AsyncIterator[chat_pb2.ChatRequest],
                   context: grpc.aio.ServicerContext) -> AsyncIterator[chat_pb2.ChatResponse]:
        """Turns run one at a time; a CancelTurn arriving mid-turn ends that turn early. The stream
        is one conversation: a message that names none continues the one its last turn was in."""
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
        conversation = ""
        try:
            while (message := await incoming.get()) is not None:
                cancel.clear()
                if conversation and not message.conversation_id:
                    message = chat_pb2.UserMessage(conversation_id=conversation, text=message.text,
                                                   max_tokens=message.max_tokens)
                async for piece in self._turn(context, message, cancel, "chat.Chat"):
                    if piece.WhichOneof("kind") == "end":
                        conversation = piece.end.conversation_id
                    yield piece
        finally:
            reader.cancel()

    async def _retrieve(self, text: str) -> tuple[list[search_pb2.SearchResult], str]:
        """Catalog entries for the question, and why there are none when search failed: a turn
        goes on without them rather than failing. Only the catalog's (no owner): the asker's own
        documents (content they had written) are not films to suggest."""
        try:
            found = await self.search.Search(search_pb2.SearchRequest(query=text, page_size=RETRIEVED))
        except grpc.aio.AioRpcError as failure:
            log.warning("retrieval failed; answering without catalog entries",
                        extra={"fields": {"code": failure.code().name}})
            return [], f"{failure.code().name} {failure.details()}"
        return [r for r in found.results if not r.document.owner_id], ""

    async def _turn(self, context, message: chat_pb2.UserMessage, cancel: asyncio.Event, route: str):
        who = kit.caller(context)
        text = kit.validate.text(message, "text", max_len=4000, parent="message")
        max_tokens = kit.validate.in_range(message, "max_tokens", 1, 512, default=256,
                                           parent="message")
        with self.in_progress.hold(who.user_id):
            async for reply in self._answer(who, text, max_tokens, message.conversation_id, cancel, route):
                yield reply

    async def _answer(self, who: kit.Caller, text: str, max_tokens: int, conversation_id: str,
                      cancel: asyncio.Event, route: str):
        started = time.perf_counter()
        conversation = await self.conversations.open(who.user_id, conversation_id)
        if conversation is None:
            raise kit.NotFound(f"no conversation {conversation_id} for this user")
        with TRACER.start_as_current_span("retrieve") as span:
            hits, search_failure = await self._retrieve(text)
            span.set_attribute("aimesh.retrieved", len(hits))
            if search_failure:
                span.set_status(trace.StatusCode.ERROR, search_failure)
        with TRACER.start_as_current_span("build prompt") as span:
            prompt = messages(text, hits, await self.conversations.window(conversation, EARLIER_TURNS))
            span.set_attribute("aimesh.prompt.messages", len(prompt))
        # The generation's span is started, not entered: this is an async generator, which must not
        # hold a context across its yields. Its attributes follow OpenTelemetry's GenAI conventions.
        generation = TRACER.start_span(f"chat {MODEL}", kind=trace.SpanKind.CLIENT, attributes={
            "gen_ai.operation.name": "chat", "gen_ai.provider.name": "triton", "gen_ai.request.model": MODEL,
            "gen_ai.request.max_tokens": max_tokens, "gen_ai.request.temperature": self.model.temperature})

        sent: list[str] = []
        finish: chat_pb2.FinishReason = chat_pb2.FINISH_REASON_STOP
        source: common_pb2.Source = common_pb2.SOURCE_MODEL
        reason = ""
        usage = chat_pb2.Usage()
        opening = lead(hits)     # the answer's first line, which the model continues
        try:
            generating = self.model.generate(prompt, max_tokens, TURN_DEADLINE_S, hits, span=generation)
            async with contextlib.aclosing(generating) as pieces:
                async for piece in pieces:
                    if cancel.is_set():   # leaving the loop cancels the generation in Triton
                        finish = chat_pb2.FINISH_REASON_CANCELLED
                        break
                    if opening and not sent:
                        sent.append(opening)
                        yield delta(opening)
                    usage.completion_tokens = piece.completion_tokens
                    if piece.text:
                        sent.append(piece.text)
                        yield delta(piece.text)
                    if piece.finish_reason:
                        finish = FINISH.get(piece.finish_reason, chat_pb2.FINISH_REASON_STOP)
                        usage = chat_pb2.Usage(prompt_tokens=piece.prompt_tokens,
                                               completion_tokens=piece.completion_tokens,
                                               cached_prompt_tokens=piece.cached_prompt_tokens)
        except kit.Unavailable as why:
            if sent:   # it failed mid-answer: the turn ends with what was said
                reason = f"chat model failed mid-answer: {why}"
            else:
                source = common_pb2.SOURCE_FALLBACK
                busy = isinstance(why, ModelBusy)
                FALLBACKS.labels(route, "model_busy" if busy else "model_unavailable").inc()
                reason = BUSY if busy else f"chat model unavailable: {why}"
                if search_failure:
                    reason += f"; search unavailable: {search_failure}"
                fallback, finish = retrieval_only(hits, max_tokens, searched=not search_failure)
                for text in fallback:
                    if cancel.is_set():
                        finish = chat_pb2.FINISH_REASON_CANCELLED
                        break
                    sent.append(text)
                    yield delta(text)
                    await asyncio.sleep(0)   # let a cancel that arrived be read between pieces

        generation.set_attributes({
            "gen_ai.response.model": f"{MODEL}/{MODEL_VERSION}", "gen_ai.response.finish_reasons":
            [chat_pb2.FinishReason.Name(finish).removeprefix("FINISH_REASON_").lower()],
            "gen_ai.usage.input_tokens": usage.prompt_tokens, "gen_ai.usage.output_tokens": usage.completion_tokens,
            "gen_ai.usage.cache_read.input_tokens": usage.cached_prompt_tokens,
            "aimesh.source": common_pb2.Source.Name(source)})
        if source == common_pb2.SOURCE_FALLBACK:
            generation.set_status(trace.StatusCode.ERROR, reason)
        generation.end()
        grounding: chat_pb2.Grounding = chat_pb2.GROUNDING_UNSPECIFIED
        if finish != chat_pb2.FINISH_REASON_CANCELLED:
            grounding, correction = check("".join(sent), hits)
            if correction:
                sent.append(correction)
                yield delta(correction)
        citations = [chat_pb2.Citation(document_id=h.document.document_id, title=h.document.title,
                                       score=h.score) for h in hits]
        yield chat_pb2.ChatResponse(citations=chat_pb2.Citations(citations=citations))
        answer = "".join(sent)

        async def audit(connection) -> None:
            await self.audit.record(
                user_id=who.user_id, model=MODEL if source == common_pb2.SOURCE_MODEL else "retrieval",
                version=MODEL_VERSION, model_input=str(prompt), output_ids=[c.document_id for c in citations],
                latency_s=time.perf_counter() - started, source=common_pb2.Source.Name(source),
                connection=connection)
        turn_id = await self.conversations.add_turn(
            conversation, Turn(text, catalog(hits), answer), chat_pb2.FinishReason.Name(finish),
            common_pb2.Source.Name(source), audit)
        yield chat_pb2.ChatResponse(end=chat_pb2.TurnEnd(
            conversation_id=conversation, turn_id=turn_id, finish_reason=finish, usage=usage,
            source=source, fallback_reason=reason, grounding=grounding,
            retrieval_failure=search_failure))


async def setup(app: kit.App) -> list[kit.Binding]:
    pool = await app.database(MIGRATIONS)
    app.prune(pool, "conversations", delete=PRUNE, count=COUNT)
    conversations = ConversationStore(pool)
    search = search_pb2_grpc.SearchServiceStub(app.channel(app.config.mesh_address, timeout_s=3))
    model = ChatModel(app.triton(), app.config.temperature, app.config.full_length)
    audit = Audit(app.outbox(pool, await app.events()), "chat")
    in_progress = AnswersInProgress(app.config.generations_per_user)
    return [kit.Binding(chat_pb2_grpc.add_ChatServiceServicer_to_server,
                        ChatServicer(conversations, search, model, audit, in_progress))]
