"""ContentService: AI-written content, created at once and written by a saga in the background."""
from __future__ import annotations

import asyncio
import contextlib
import json
from collections import defaultdict
from collections.abc import AsyncIterator

import grpc
from opentelemetry import propagate

from aimesh.content.v1 import content_pb2, content_pb2_grpc
from aimesh.search.v1 import search_pb2_grpc
from services import kit
from services.kit.crash import CrashPoints

from .saga import Saga, SagaConfig
from .store import CHANGED, MIGRATIONS, Content, ContentStore
from .writing import Writer

KINDS = {"review": content_pb2.CONTENT_KIND_REVIEW, "blurb": content_pb2.CONTENT_KIND_BLURB,
         "story": content_pb2.CONTENT_KIND_STORY}
STATES = {"draft": content_pb2.CONTENT_STATE_DRAFT, "compensating": content_pb2.CONTENT_STATE_COMPENSATING,
          "published": content_pb2.CONTENT_STATE_PUBLISHED, "rejected": content_pb2.CONTENT_STATE_REJECTED,
          "failed": content_pb2.CONTENT_STATE_FAILED, "cancelled": content_pb2.CONTENT_STATE_CANCELLED,
          "deleted": content_pb2.CONTENT_STATE_DELETED}
STEP_STATES = {"pending": content_pb2.STEP_STATE_PENDING, "running": content_pb2.STEP_STATE_RUNNING,
               "done": content_pb2.STEP_STATE_DONE, "failed": content_pb2.STEP_STATE_FAILED,
               "compensated": content_pb2.STEP_STATE_COMPENSATED}
WATCH_REREAD_S = 2.0   # a watcher re-reads at least this often (a missed notice costs no more)


def to_proto(content: Content) -> content_pb2.Content:
    return content_pb2.Content(
        content_id=content.id, owner_id=content.owner, kind=KINDS[content.kind], prompt=content.prompt,
        state=STATES[content.state], reason=content.reason, text=content.text,
        steps=[content_pb2.Step(name=s.name, state=STEP_STATES[s.state], attempts=s.attempts,
                                outcome=s.outcome, instance=s.ran_by,
                                start_time=kit.timestamp(s.started_at) if s.started_at else None,
                                end_time=kit.timestamp(s.ended_at) if s.ended_at and s.state != "running" else None)
               for s in content.steps],
        create_time=kit.timestamp(content.created_at), update_time=kit.timestamp(content.updated_at),
        deadline=kit.timestamp(content.deadline))


class Changes:
    """Wakes this instance's watchers of a content when Postgres announces a change of it."""

    def __init__(self):
        self.waiting: dict[str, set[asyncio.Event]] = defaultdict(set)

    def announced(self, connection, pid, channel, content_id: str) -> None:
        for event in self.waiting.get(content_id, ()):
            event.set()

    @contextlib.contextmanager
    def watch(self, content_id: str):
        event = asyncio.Event()
        self.waiting[content_id].add(event)
        try:
            yield event
        finally:
            self.waiting[content_id].discard(event)
            if not self.waiting[content_id]:
                del self.waiting[content_id]


class ContentServicer(content_pb2_grpc.ContentServiceServicer):
    def __init__(self, store: ContentStore, saga: Saga, changes: Changes, config: SagaConfig,
                 per_user: int):
        self.store, self.saga, self.changes, self.config = store, saga, changes, config
        self.per_user = per_user

    async def _own(self, context: grpc.aio.ServicerContext, content_id_field: str = "content_id",
                   request=None) -> Content:
        """The content the request names, if the caller may see it (its owner, or an admin);
        NOT_FOUND otherwise, so ids of others' content are not confirmed."""
        who = kit.caller(context)
        content_id = kit.validate.identifier(request, content_id_field)
        content = await self.store.get(str(content_id))
        if content is None or (content.owner != who.user_id and not who.is_admin):
            raise kit.NotFound(f"no content {content_id}")
        return content

    async def CreateContent(self, request: content_pb2.CreateContentRequest,
                            context: grpc.aio.ServicerContext) -> content_pb2.CreateContentResponse:
        who = kit.caller(context)
        prompt = kit.validate.text(request, "prompt", max_len=1000)
        kind = kit.validate.choice(request, "kind", KINDS) or "review"
        carrier: dict[str, str] = {}
        propagate.inject(carrier)   # the saga's steps join this call's trace
        content = await self.store.create(who.user_id, kind, prompt, self.config.deadline_s, self.per_user,
                                          self.saga.holder, carrier.get("traceparent", ""))
        if content is None:
            raise kit.ResourceExhausted(f"you already have {self.per_user} pieces being written")
        self.saga.wake.set()
        return content_pb2.CreateContentResponse(content=to_proto(content))

    async def GetContent(self, request: content_pb2.GetContentRequest,
                         context: grpc.aio.ServicerContext) -> content_pb2.GetContentResponse:
        return content_pb2.GetContentResponse(content=to_proto(await self._own(context, request=request)))

    async def ListContent(self, request: content_pb2.ListContentRequest,
                          context: grpc.aio.ServicerContext) -> content_pb2.ListContentResponse:
        who = kit.caller(context)
        contents, token = await self._page(request, owner=who.user_id)
        return content_pb2.ListContentResponse(contents=contents, next_page_token=token)

    async def ListSagas(self, request: content_pb2.ListSagasRequest,
                        context: grpc.aio.ServicerContext) -> content_pb2.ListSagasResponse:
        kit.admin(context)
        contents, token = await self._page(request, owner=None)
        return content_pb2.ListSagasResponse(contents=contents, next_page_token=token)

    async def _page(self, request, owner: str | None) -> tuple[list[content_pb2.Content], str]:
        limit = kit.validate.in_range(request, "page_size", 1, 100, default=20)
        offset = kit.validate.page_offset(request)
        found = await self.store.page(owner=owner, limit=limit + 1, offset=offset)
        return [to_proto(c) for c in found[:limit]], str(offset + limit) if len(found) > limit else ""

    async def WatchContent(self, request: content_pb2.WatchContentRequest,
                           context: grpc.aio.ServicerContext) -> AsyncIterator[content_pb2.WatchContentResponse]:
        content = await self._own(context, request=request)
        with self.changes.watch(content.id) as changed:
            sent = None
            while True:
                shown = to_proto(content)
                if shown != sent:
                    yield content_pb2.WatchContentResponse(content=shown)
                    sent = shown
                if content.final:
                    return
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(changed.wait(), WATCH_REREAD_S)
                changed.clear()
                content = await self.store.get(content.id) or content

    async def CancelContent(self, request: content_pb2.CancelContentRequest,
                            context: grpc.aio.ServicerContext) -> content_pb2.CancelContentResponse:
        content = await self._own(context, request=request)
        if content.final:
            raise kit.FailedPrecondition(f"content {content.id} is already {content.state}")
        cancelled = await self.store.request_cancel(content.id)
        return content_pb2.CancelContentResponse(content=to_proto(cancelled or content))

    async def DeleteContent(self, request: content_pb2.DeleteContentRequest,
                            context: grpc.aio.ServicerContext) -> content_pb2.DeleteContentResponse:
        content = await self._own(context, request=request)
        if not content.final:
            await self.store.request_cancel(content.id)   # the saga undoes what it did
            return content_pb2.DeleteContentResponse(deleted=True)
        if content.state != "published":
            return content_pb2.DeleteContentResponse(deleted=False)
        try:   # first: never marked deleted while still findable
            await self.saga.writer.unindex(content, self.config.step_timeout_s)
        except (grpc.aio.AioRpcError, kit.Unavailable) as failure:
            raise kit.Unavailable("search could not remove it now; try again") from failure
        return content_pb2.DeleteContentResponse(deleted=await self.store.delete_published(content.id))


async def setup(app: kit.App) -> list[kit.Binding]:
    pool = await app.database(MIGRATIONS)
    store = ContentStore(pool)
    changes = Changes()
    await app.listen(CHANGED, changes.announced)
    events = await app.events()
    outbox = app.outbox(pool, events)
    search = search_pb2_grpc.SearchServiceStub(app.channel(app.config.mesh_address))
    config = SagaConfig.parse(json.loads(app.config.saga or "{}"))
    writer = Writer(app.triton(), search, app.config.temperature)
    saga = Saga(store, writer, outbox, config, holder=app.config.name,
                crash=CrashPoints(app.config.crash_points, app.config.service))
    app.spawn(saga.run(app.stopping), name="saga")
    return [kit.Binding(content_pb2_grpc.add_ContentServiceServicer_to_server,
                        ContentServicer(store, saga, changes, config, app.config.generations_per_user))]
