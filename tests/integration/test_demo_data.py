"""Demo data as `up` leaves it: alice and bob start with a MovieLens user's history each."""
import asyncio

import pytest

from aimesh.common.v1 import common_pb2
from aimesh.notify.v1 import notify_pb2, notify_pb2_grpc
from aimesh.user.v1 import user_pb2, user_pb2_grpc
from services.kit import database
from services.user import demo
from services.user.store import MIGRATIONS, UserStore
from tests.integration.client import bearer, stored, wait_for
from tests.integration.test_services import recommend

MARKER_ITEM = 1682   # the catalog's last item, not in alice's imported history (asserted)


def wait_for_demo_history(mesh, email: str) -> None:
    """Until recommend-svc holds the account's imported history: `up` starts user-svc, whose
    outbox relays the purchases, and recommend-svc's consumer records them, in the background."""
    def recorded() -> bool:
        return stored(mesh, 'SELECT count(*) FROM recommend.history h JOIN "user".users u'
                            " ON u.id = h.user_id WHERE u.email = $1", email)[0] >= demo.HISTORY_LENGTH
    wait_for(recorded, timeout_s=30, interval_s=0.2, what=f"{email}'s imported history")


@pytest.mark.parametrize("account", ["alice", "bob"])
def test_a_demo_accounts_first_recommendations_come_from_the_model(mesh, account, request):
    token = request.getfixturevalue(account)
    email = f"{account}@demo.aimesh"
    wait_for_demo_history(mesh, email)
    with mesh.channel() as channel:
        reply = recommend(channel, token)
    assert reply.source == common_pb2.SOURCE_MODEL and reply.fallback_reason == ""
    assert len(reply.items) == 10 and all(i.title for i in reply.items)
    seeded = {r.item_id for r in demo.history(email)}
    assert len(seeded) == demo.HISTORY_LENGTH
    assert not seeded & {i.item_id for i in reply.items}   # the model never returns the history


def test_the_imported_history_notifies_nobody(mesh, alice):
    wait_for_demo_history(mesh, "alice@demo.aimesh")
    # notify-svc has seen every event published before this marker once the marker's arrives.
    with mesh.channel() as channel:
        users = user_pb2_grpc.UserServiceStub(channel)
        marker = users.RecordPurchase(user_pb2.RecordPurchaseRequest(item_id=MARKER_ITEM),
                                      metadata=bearer(alice), timeout=5)
        inbox = notify_pb2_grpc.NotificationServiceStub(channel)

        def purchases_once_the_marker_is_in() -> list | None:
            listed = inbox.ListNotifications(notify_pb2.ListNotificationsRequest(page_size=100),
                                             metadata=bearer(alice), timeout=5).notifications
            bought = [n for n in listed if n.kind == "user.purchased"]
            return bought if any(f"Item {MARKER_ITEM} " in n.body for n in bought) else None
        notified = wait_for(purchases_once_the_marker_is_in, timeout_s=30,
                            what="the marker purchase's notification")
    assert marker.purchase_id
    seeded = {r.item_id for r in demo.history("alice@demo.aimesh")}
    assert MARKER_ITEM not in seeded
    named = {item for n in notified for item in seeded if f"Item {item} " in n.body}
    assert not named, f"imported purchases were notified: {sorted(named)}"


async def _seed_again(mesh) -> tuple[list, int]:
    pool = await database.connect(mesh.postgres_dsn(), "user", MIGRATIONS)
    announced = []

    async def announce(connection, purchase) -> None:
        announced.append(purchase)
    try:
        await demo.seed(UserStore(pool), announce)
        imported = await pool.fetchval(
            "SELECT count(*) FROM purchases p JOIN users u ON u.id = p.user_id"
            " WHERE u.email = 'alice@demo.aimesh' AND p.created_at < '2000-01-01'")
    finally:
        await pool.close()
    return announced, imported


def test_demo_histories_are_imported_once(mesh):
    """Seeding again (a restart, a second instance) writes and announces nothing."""
    announced, imported = asyncio.run(_seed_again(mesh))
    assert announced == [] and imported == demo.HISTORY_LENGTH
