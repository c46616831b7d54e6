"""NotificationService: events become notifications in the user's inbox, listed or live."""
from __future__ import annotations

import asyncio
import collections
import uuid
from collections.abc import AsyncIterator

import grpc

from aimesh.events.v1 import events_pb2
from aimesh.notify.v1 import notify_pb2, notify_pb2_grpc
from services import kit

from .store import COUNT, MIGRATIONS, PRUNE, Inbox, Notification

SUBSCRIBER_QUEUE = 100   # a subscriber this far behind is dropped rather than buffered forever


CONTENT_ENDINGS = {   # subject -> (title, what happened)
    "content.published": ("Your content is published", "is published; you find it in Search"),
    "content.rejected": ("Your content was rejected", "was not published"),
    "content.failed": ("Your content could not be written", "was not published"),
}


def describe(event: events_pb2.Envelope) -> tuple[str, str, str] | None:
    """(user id, title, body) for the events that notify someone."""
    if event.type == "user.registered":
        registered = kit.unpack(event, events_pb2.UserRegistered)
        return (registered.user_id, "Welcome to aimesh",
                f"Hello {registered.display_name}, your account is ready.")
    if event.type == "user.purchased":
        purchased = kit.unpack(event, events_pb2.UserPurchased)
        if purchased.imported:   # past history brought in with the account, not news to its owner
            return None
        return purchased.user_id, "Purchase recorded", f"Item {purchased.item_id} is in your history."
    if event.type == "job.completed":
        job = kit.unpack(event, events_pb2.JobCompleted)
        outcome = f"indexed {job.indexed_count} documents" if job.succeeded else f"failed: {job.error}"
        return job.user_id, "Index job finished", f"Job {job.job_id} {outcome}."
    if event.type in CONTENT_ENDINGS:
        ended = kit.unpack(event, events_pb2.ContentEnded)
        title, outcome = CONTENT_ENDINGS[event.type]
        why = f": {ended.reason}" if ended.reason else ""
        return ended.owner_id, title, f"“{ended.title}” {outcome}{why}."
    return None


def to_proto(n: Notification) -> notify_pb2.Notification:
    return notify_pb2.Notification(notification_id=n.id, kind=n.kind, title=n.title,
                                   body=n.body, read=n.read, create_time=kit.timestamp(n.created_at))


class Subscribers:
    """Live subscribers of this instance, by user."""

    def __init__(self):
        self.queues: dict[str, set[asyncio.Queue]] = collections.defaultdict(set)

    def add(self, user_id: str) -> asyncio.Queue:
        queue: asyncio.Queue = asyncio.Queue(SUBSCRIBER_QUEUE)
        self.queues[user_id].add(queue)
        return queue

    def remove(self, user_id: str, queue: asyncio.Queue) -> None:
        self.queues[user_id].discard(queue)

    def deliver(self, notification: Notification) -> None:
        for queue in list(self.queues[notification.user_id]):
            try:
                queue.put_nowait(notification)
            except asyncio.QueueFull:   # too slow: end its stream; it can list what it missed
                self.remove(notification.user_id, queue)
                queue.get_nowait()
                queue.put_nowait(None)


class NotificationServicer(notify_pb2_grpc.NotificationServiceServicer):
    def __init__(self, inbox: Inbox, subscribers: Subscribers):
        self.inbox, self.subscribers = inbox, subscribers

    async def ListNotifications(self, request: notify_pb2.ListNotificationsRequest,
                               context: grpc.aio.ServicerContext) -> notify_pb2.ListNotificationsResponse:
        who = kit.caller(context)
        limit = kit.validate.in_range(request, "page_size", 1, 100, default=20)
        offset = kit.validate.page_offset(request)
        found = await self.inbox.page(who.user_id, limit=limit + 1, offset=offset,
                                      unread_only=request.unread_only)
        return notify_pb2.ListNotificationsResponse(
            notifications=[to_proto(n) for n in found[:limit]],
            next_page_token=str(offset + limit) if len(found) > limit else "")

    async def MarkRead(self, request: notify_pb2.MarkReadRequest,
                      context: grpc.aio.ServicerContext) -> notify_pb2.MarkReadResponse:
        who = kit.caller(context)
        ids = kit.validate.count(request, "notification_ids", 1, 500)
        try:
            parsed = [uuid.UUID(i) for i in ids]
        except ValueError:
            raise kit.InvalidArgument("notification_ids", "holds a malformed id") from None
        return notify_pb2.MarkReadResponse(updated_count=await self.inbox.mark_read(who.user_id, parsed))

    async def Subscribe(self, request: notify_pb2.SubscribeRequest,
                       context: grpc.aio.ServicerContext) -> AsyncIterator[notify_pb2.SubscribeResponse]:
        who = kit.caller(context)
        queue = self.subscribers.add(who.user_id)
        # Headers now tell the client it is subscribed: what happens after it sees them reaches it.
        await context.send_initial_metadata(())
        try:
            while (notification := await queue.get()) is not None:
                yield notify_pb2.SubscribeResponse(notification=to_proto(notification))
        finally:
            self.subscribers.remove(who.user_id, queue)


async def setup(app: kit.App) -> list[kit.Binding]:
    pool = await app.database(MIGRATIONS)
    app.prune(pool, "notifications", delete=PRUNE, count=COUNT)
    inbox = Inbox(pool)
    subscribers = Subscribers()
    events = await app.events()

    async def on_event(event: events_pb2.Envelope) -> None:
        if (described := describe(event)) is None:
            return
        user_id, title, body = described
        if (stored := await inbox.add(event.event_id, user_id, event.type, title, body)):
            subscribers.deliver(stored)

    for stream in ("USERS", "JOB_EVENTS", "CONTENT_EVENTS"):
        durable = f"notify-{stream.lower()}"
        app.spawn(events.consume(stream, durable, on_event, stop=app.stopping,
                                 dedupe_window_s=app.retention.tables["notifications"]),
                  name=durable)
    return [kit.Binding(notify_pb2_grpc.add_NotificationServiceServicer_to_server,
                        NotificationServicer(inbox, subscribers))]
