"""recommend-svc's histories in memory (services/recommend/history.py) over its real store in
the mesh's Postgres: what an instance's own consumer sees is answered from memory, a purchase
another instance wrote first is counted once, a read racing the consumer loses nothing, and a
consumer that is behind sends reads to Postgres."""
import asyncio
import uuid

import pytest

from services.kit import database
from services.kit.events import Progress
from services.recommend.history import Histories
from services.recommend.store import MIGRATIONS, Purchase, RecommendStore


class GatedStore(RecommendStore):
    """The real store, whose reads of a history wait for the test to open a gate."""

    def __init__(self, pool):
        super().__init__(pool)
        self.gate = asyncio.Event()
        self.gate.set()
        self.reads = 0

    async def recent(self, user_id, limit=50):
        self.reads += 1
        rows = await super().recent(user_id, limit)
        await self.gate.wait()
        return rows


@pytest.fixture
async def store(mesh):
    pool = await database.connect(mesh.postgres_dsn(), f"history_test_{uuid.uuid4().hex[:8]}",
                                  MIGRATIONS)
    yield GatedStore(pool)
    await pool.close()


def caught_up() -> Progress:
    progress = Progress()
    progress.caught_up()
    return progress


def bought(item_id: int) -> Purchase:
    return Purchase(uuid.uuid4().hex, item_id)


async def test_a_held_history_is_answered_from_memory_and_follows_the_consumer(store):
    user = str(uuid.uuid4())
    histories = Histories(store, caught_up())
    await store.record(user, bought(1))
    assert await histories.recent(user) == [1]          # read from Postgres once
    await histories.record(user, bought(2))              # this instance's consumer
    assert await histories.recent(user) == [2, 1]
    assert store.reads == 1


async def test_a_purchase_another_instance_wrote_first_counts_once(store):
    user = str(uuid.uuid4())
    histories = Histories(store, caught_up())
    first = bought(7)
    await store.record(user, first)                      # the other instance's consumer
    assert await histories.recent(user) == [7]
    await histories.record(user, first)                  # this one's, later: the same event
    assert await histories.recent(user) == [7]


async def test_a_purchase_arriving_while_a_history_is_read_is_not_lost(store):
    user = str(uuid.uuid4())
    histories = Histories(store, caught_up())
    await store.record(user, bought(1))
    store.gate.clear()
    reading = asyncio.ensure_future(histories.recent(user))
    await asyncio.sleep(0)
    while store.reads == 0:        # the read has begun
        await asyncio.sleep(0.01)
    await histories.record(user, bought(2))              # after the read's snapshot
    store.gate.set()
    assert await reading in ([1], [2, 1])                # the racing call itself may miss it
    assert await histories.recent(user) == [2, 1]        # memory does not


async def test_a_consumer_that_is_behind_sends_reads_to_postgres(store):
    user = str(uuid.uuid4())
    now = [0.0]
    progress = Progress(clock=lambda: now[0])
    progress.caught_up()
    histories = Histories(store, progress)
    assert await histories.recent(user) == []
    await store.record(user, bought(3))                  # only another instance has seen it
    assert await histories.recent(user) == []            # memory, current: not yet
    now[0] = 60.0                                        # this consumer has been stuck a minute
    assert await histories.recent(user) == [3]


async def test_memory_holds_at_most_max_users(store):
    histories = Histories(store, caught_up(), max_users=2)
    users = [str(uuid.uuid4()) for _ in range(3)]
    for user in users:
        await histories.recent(user)
    assert list(histories.users) == users[1:]
