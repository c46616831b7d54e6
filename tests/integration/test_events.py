"""The kit's event consumer against the mesh's real NATS JetStream: redelivery, then dead letters."""
import asyncio
import uuid

from aimesh.events.v1 import events_pb2


async def test_an_event_that_keeps_failing_is_dead_lettered_and_reported(mesh):
    bus = await mesh.events("test-dead-letters")
    stop, attempts, given_up = asyncio.Event(), [], asyncio.Event()
    published = await bus.publish("job.completed", events_pb2.JobCompleted(
        job_id=f"poison-{uuid.uuid4().hex[:6]}", user_id=str(uuid.uuid4())))

    async def always_fails(event):
        if event.event_id == published.event_id:
            attempts.append(event.event_id)
            raise RuntimeError("cannot handle this one")

    async def give_up(event, failure):
        assert event.event_id == published.event_id and "cannot handle" in str(failure)
        given_up.set()

    dead = await bus.jetstream.subscribe("deadletter.job.completed", ordered_consumer=True)
    consumer = asyncio.create_task(bus.consume(
        "JOB_EVENTS", f"test-{uuid.uuid4().hex[:8]}", always_fails, max_deliver=2,
        give_up=give_up, stop=stop))
    try:
        await asyncio.wait_for(given_up.wait(), 30)
        for _ in range(1000):   # earlier dead letters in the stream come first
            letter = await dead.next_msg(timeout=10)
            if events_pb2.Envelope.FromString(letter.data).event_id == published.event_id:
                break
        assert letter.headers["Aimesh-Error"] == "cannot handle this one"
        assert len(attempts) == 2
    finally:
        stop.set()
        await consumer
        await bus.connection.close()
