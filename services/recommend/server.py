"""RecommendService: items for the calling user.

The recommender model is not deployed yet (it is built by the models issue), so every answer
is the popular-items fallback, marked as such; the user's history is already kept from
user.purchased events so the model can use it once it is there."""
from __future__ import annotations

from aimesh.common.v1 import common_pb2
from aimesh.events.v1 import events_pb2
from aimesh.recommend.v1 import recommend_pb2, recommend_pb2_grpc
from services import kit

from .store import MIGRATIONS, RecommendStore

CONSUMER = "recommend-history"   # one durable consumer shared by every instance


class RecommendServicer(recommend_pb2_grpc.RecommendServiceServicer):
    def __init__(self, store: RecommendStore):
        self.store = store

    async def Recommend(self, request, context):
        who = kit.caller(context)
        limit = kit.validate.in_range(request, "limit", 1, 100, default=10)
        exclude = list(request.exclude_item_ids)
        if len(exclude) > 1000:
            raise kit.InvalidArgument("exclude_item_ids", "at most 1000 ids")
        history = await self.store.recent(who.user_id)
        reason = "model not deployed" if history else "cold start: no history yet"
        items = await self.store.popular(limit, exclude + history)
        return recommend_pb2.RecommendResponse(
            items=[recommend_pb2.RecommendedItem(item_id=i.item_id, title=i.title, score=i.score)
                   for i in items],
            source=common_pb2.SOURCE_FALLBACK, fallback_reason=reason)


async def setup(app: kit.App) -> list[kit.Binding]:
    store = RecommendStore(await app.database(MIGRATIONS))
    if app.config.demo:
        from .demo import seed
        await seed(store)
    events = await app.events()

    async def on_purchase(event: events_pb2.Envelope) -> None:
        if event.type == "user.purchased":
            purchase = kit.unpack(event, events_pb2.UserPurchased)
            await store.record(event.event_id, purchase.user_id, purchase.item_id)

    app.spawn(events.consume("USERS", CONSUMER, on_purchase, subjects=["user.purchased"],
                             stop=app.stopping), name=CONSUMER)
    return [kit.Binding("aimesh.recommend.v1.RecommendService",
                        recommend_pb2_grpc.add_RecommendServiceServicer_to_server,
                        RecommendServicer(store))]
