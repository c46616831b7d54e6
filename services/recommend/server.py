"""RecommendService: items for the calling user, from the recommender model (this instance's
version) or, when the user has no history or the model cannot answer, from popular items,
marked FALLBACK with the reason. Never an error to the caller because the model failed."""
from __future__ import annotations

import time

import grpc

from aimesh.common.v1 import common_pb2
from aimesh.events.v1 import events_pb2
from aimesh.recommend.v1 import recommend_pb2, recommend_pb2_grpc
from services import kit
from services.kit.audit import Audit
from services.kit.breaker import Breaker
from services.kit.events import Progress
from services.kit.telemetry import FALLBACKS

from .cache import RecentAnswers
from .history import Histories
from .model import MODEL, RecommenderModel
from .store import MIGRATIONS, Item, Purchase, RecommendStore

COLD_START, MODEL_UNAVAILABLE = "cold_start", "model_unavailable"   # why an answer is a fallback
HISTORY_CONSUMER = "recommend-history"   # + the instance's name: one consumer per instance
HISTORY_CONSUMER_INACTIVE_S = 24 * 3600   # JetStream drops the consumer of an instance gone this long


class RecommendServicer(recommend_pb2_grpc.RecommendServiceServicer):
    def __init__(self, store: RecommendStore, histories: Histories, model: RecommenderModel,
                 audit: Audit, cache: RecentAnswers, version: str):
        self.store, self.histories, self.model = store, histories, model
        self.audit, self.cache, self.version = audit, cache, version

    async def Recommend(self, request: recommend_pb2.RecommendRequest,
                       context: grpc.aio.ServicerContext) -> recommend_pb2.RecommendResponse:
        who = kit.caller(context)
        if (pinned := kit.pinned_version(context)) and pinned != self.version:
            # the gateway sends a served version's pin to that version: this one serves none
            raise kit.InvalidArgument(kit.PIN_HEADER, f"no version {pinned!r} is served")
        limit = kit.validate.in_range(request, "limit", 1, 100, default=10)
        exclude = list(request.exclude_item_ids)
        if len(exclude) > 1000:
            raise kit.InvalidArgument("exclude_item_ids", "at most 1000 ids")
        started = time.perf_counter()
        history = await self.histories.recent(who.user_id)
        # Keyed by the history too: the user's next purchase is a new key, so an answer is
        # never served from before it, whichever instance recorded it.
        key = (who.user_id, limit, tuple(exclude), tuple(history))
        if (cached := self.cache.get(key)) is not None:
            return cached   # the decision was audited when it was made
        response = await self._answer(history, limit, exclude)
        await self.audit.record(
            user_id=who.user_id, model=MODEL, version=response.model_version,
            model_input=f"{history}|{limit}|{exclude}", output_ids=[i.item_id for i in response.items],
            latency_s=time.perf_counter() - started,
            source=common_pb2.Source.Name(response.source))
        if response.source == common_pb2.SOURCE_MODEL:   # a fallback is not kept past the outage
            self.cache.put(key, response)
        return response

    async def _answer(self, history: list[int], limit: int, exclude: list[int]):
        if not history:
            return await self._fallback(limit, exclude, COLD_START, "cold start: no history yet")
        try:
            scored = await self.model.top_k(history, limit, exclude)
        except kit.Unavailable as why:
            return await self._fallback(limit, exclude + history, MODEL_UNAVAILABLE,
                                        f"model unavailable: {why}")
        titles = await self.store.titles([item_id for item_id, _ in scored])
        items = [Item(item_id, titles.get(item_id, ""), score) for item_id, score in scored]
        return self._response(items, source=common_pb2.SOURCE_MODEL, version=self.version)

    async def _fallback(self, limit: int, exclude: list[int], cause: str, reason: str):
        FALLBACKS.labels("recommend.Recommend", cause).inc()
        return self._response(await self.store.popular(limit, exclude),
                              source=common_pb2.SOURCE_FALLBACK, reason=reason)

    @staticmethod
    def _response(items: list[Item], *, source, version: str = "", reason: str = ""):
        return recommend_pb2.RecommendResponse(
            items=[recommend_pb2.RecommendedItem(item_id=i.item_id, title=i.title, score=i.score)
                   for i in items],
            model_version=version, source=source, fallback_reason=reason)


async def setup(app: kit.App) -> list[kit.Binding]:
    config = app.config
    pool = await app.database(MIGRATIONS)
    store = RecommendStore(pool)
    if config.demo:
        from .demo import seed
        await seed(store)
    events = await app.events()
    progress = Progress()
    histories = Histories(store, progress)

    async def record_purchase(event: events_pb2.Envelope) -> None:
        if event.type == "user.purchased":
            purchased = kit.unpack(event, events_pb2.UserPurchased)
            await histories.record(purchased.user_id, Purchase(event.event_id, purchased.item_id))

    consumer = f"{HISTORY_CONSUMER}-{config.name}"
    app.spawn(events.consume("USERS", consumer, record_purchase, subjects=["user.purchased"],
                             inactive_s=HISTORY_CONSUMER_INACTIVE_S, progress=progress,
                             stop=app.stopping), name=consumer)
    version = config.version or "v1"
    model = RecommenderModel(app.triton(),
                             version.removeprefix("v"), Breaker(f"{MODEL}-{version}"))
    audit = Audit(app.outbox(pool, events), "recommend")
    servicer = RecommendServicer(store, histories, model, audit, RecentAnswers(), version)
    return [kit.Binding(recommend_pb2_grpc.add_RecommendServiceServicer_to_server, servicer)]
