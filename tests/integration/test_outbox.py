"""The kit's transactional outbox against the mesh's real Postgres and NATS JetStream."""
import asyncio
import uuid

from aimesh.events.v1 import events_pb2
from services.kit import database
from services.kit.events import Events
from services.kit.outbox import MIGRATION, Outbox


async def published_ids(bus: Events, subject: str) -> set[str]:
    info = await bus.jetstream.stream_info("JOB_EVENTS")
    reader = await bus.jetstream.subscribe(subject, ordered_consumer=True)
    found = set()
    for _ in range(info.state.messages):
        try:
            message = await reader.next_msg(timeout=5)
        except TimeoutError:
            break
        found.add(events_pb2.Envelope.FromString(message.data).event_id)
    await reader.unsubscribe()
    return found


async def test_an_event_is_published_only_if_its_transaction_commits_even_after_a_crash(mesh):
    pool = await database.connect(mesh.postgres_dsn(), f"outbox_test_{uuid.uuid4().hex[:8]}",
                                  [MIGRATION])
    bus = await mesh.events("outbox-test")
    try:
        crashed = Outbox(pool, bus)   # writes, but dies before it relays

        def done(job: str):
            return events_pb2.JobCompleted(job_id=job, user_id=str(uuid.uuid4()), succeeded=True)

        try:
            async with pool.acquire() as connection, connection.transaction():
                rolled_back = await crashed.add(connection, "job.completed", done("rolled-back"))
                raise RuntimeError("the change fails")
        except RuntimeError:
            pass
        async with pool.acquire() as connection, connection.transaction():
            committed = await crashed.add(connection, "job.completed", done("committed"))
        assert await pool.fetchval("SELECT count(*) FROM outbox") == 1   # only the committed one

        survivor = Outbox(pool, bus)   # another instance, or the same one after its restart
        assert await survivor.relay() == 1
        assert await survivor.relay() == 0
        published = await published_ids(bus, "job.completed")
        assert committed.event_id in published and rolled_back.event_id not in published
    finally:
        await bus.connection.close()
        await pool.close()


async def test_appends_made_together_share_a_commit_and_each_is_stored(mesh):
    pool = await database.connect(mesh.postgres_dsn(), f"outbox_test_{uuid.uuid4().hex[:8]}",
                                  [MIGRATION])
    bus = await mesh.events("outbox-group-commit")
    try:
        outbox = Outbox(pool, bus)    # not relaying: the rows stay to be counted
        decision = events_pb2.AiDecision(user_id=str(uuid.uuid4()), model="recommender")
        lone = await outbox.append("ai.decisions.recommend", decision)
        together = await asyncio.gather(*(outbox.append("ai.decisions.recommend", decision)
                                          for _ in range(50)))
        stored = {r["event_id"]: r["xmin"] for r in await pool.fetch("SELECT event_id, xmin FROM outbox")}
        assert set(stored) == {lone.event_id, *(e.event_id for e in together)}
        # one transaction id per commit: the 50 concurrent appends took a few, not 50
        assert len({stored[e.event_id] for e in together}) <= 5
    finally:
        await bus.connection.close()
        await pool.close()
