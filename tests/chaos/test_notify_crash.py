"""notify-svc crashes (SIGKILL) while 1,000 events flow; after its restart every event has
produced exactly one notification: none lost, none doubled."""
import asyncio
import threading

import grpc

from aimesh.events.v1 import events_pb2
from aimesh.notify.v1 import notify_pb2, notify_pb2_grpc
from aimesh.user.v1 import user_pb2
from tests.integration.client import bearer, new_user, wait_for

EVENTS = 1000


def all_notifications(inbox, token) -> list:
    found, page = [], ""
    while True:
        reply = inbox.ListNotifications(notify_pb2.ListNotificationsRequest(page_size=100, page_token=page),
                                        metadata=bearer(token), timeout=10)
        found += reply.notifications
        if not (page := reply.next_page_token):
            return found


async def publish_purchases(mesh, user_id: str, crash_after: int, crashed: threading.Event):
    bus = await mesh.events("chaos-publisher")
    try:
        for item_id in range(1, EVENTS + 1):
            await bus.publish("user.purchased", events_pb2.UserPurchased(
                user_id=user_id, purchase_id=f"chaos-{item_id}", item_id=item_id))
            if item_id == crash_after:
                await asyncio.to_thread(mesh.cli, "stop", "notify", "--kill")
                crashed.set()
    finally:
        await bus.connection.close()


def test_notify_crash_mid_stream_loses_and_duplicates_nothing(mesh, users):
    _, token = new_user(users, "chaos")
    user_id = users.GetProfile(user_pb2.GetProfileRequest(), metadata=bearer(token), timeout=5).profile.user_id
    crashed = threading.Event()
    asyncio.run(publish_purchases(mesh, user_id, crash_after=EVENTS // 3, crashed=crashed))
    assert crashed.is_set() and "stopped" in mesh.cli("status").stdout   # notify really was down

    started = mesh.cli("start", "notify")
    assert started.returncode == 0, started.stderr
    with mesh.channel() as channel:
        inbox = notify_pb2_grpc.NotificationServiceStub(channel)

        def purchases() -> list:
            try:
                return [n for n in all_notifications(inbox, token) if n.kind == "user.purchased"]
            except grpc.RpcError as error:   # until the gateway's health check sees it back
                assert error.code() == grpc.StatusCode.UNAVAILABLE, error
                return []

        wait_for(lambda: len(purchases()) >= EVENTS, timeout_s=120, interval_s=1,
                 what=f"{EVENTS} purchase notifications")
        items = [int(n.body.split()[1]) for n in purchases()]   # "Item 17 is in your history."
    assert sorted(items) == list(range(1, EVENTS + 1))
