"""Demo data as `up` leaves it: alice and bob start with a MovieLens user's history each."""
import asyncio

import pytest

from aimesh.common.v1 import common_pb2
from aimesh.infra import postgres_dsn
from aimesh.notify.v1 import notify_pb2, notify_pb2_grpc
from services.kit import database
from services.user import demo
from services.user.store import MIGRATIONS, UserStore
from tests.integration.client import bearer
from tests.integration.test_services import recommend


@pytest.mark.parametrize("account", ["alice", "bob"])
def test_a_demo_accounts_first_recommendations_come_from_the_model(mesh, account, request):
    token = request.getfixturevalue(account)
    with mesh.channel() as channel:
        reply = recommend(channel, token)   # no waiting: `up` left the history in place
        inbox = notify_pb2_grpc.NotificationServiceStub(channel)
        notified = inbox.ListNotifications(notify_pb2.ListNotificationsRequest(page_size=100),
                                           metadata=bearer(token), timeout=5).notifications
    assert reply.source == common_pb2.SOURCE_MODEL and reply.fallback_reason == ""
    assert len(reply.items) == 10 and all(i.title for i in reply.items)
    seeded = {r.item_id for r in demo.history(f"{account}@demo.aimesh")}
    assert len(seeded) == demo.HISTORY_LENGTH
    assert not seeded & {i.item_id for i in reply.items}   # the model never returns the history
    # The imported history notifies nobody (purchases made in other tests may).
    assert len([n for n in notified if n.kind == "user.purchased"]) < len(seeded)


async def _seed_again(mesh) -> tuple[list, int]:
    pool = await database.connect(postgres_dsn(mesh.topo.infra), "user", MIGRATIONS)
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
