"""Bounded growth on the mesh's real NATS and Postgres: streams carry the topology's limits (read
back from JetStream) and a short max age expires messages; pruning removes only expired rows;
a consumer's dedupe holds for redeliveries inside its window and ignores events older than it."""
from __future__ import annotations

import asyncio
import time
import urllib.request
import uuid

import pytest

from aimesh.events.v1 import events_pb2
from services.chat.store import COUNT as CONVERSATIONS
from services.chat.store import PRUNE as PRUNE_CONVERSATIONS
from services.kit.events import envelope
from services.kit.retention import Pruning, StreamLimits
from services.notify.store import COUNT as NOTIFICATIONS
from services.notify.store import PRUNE as PRUNE_NOTIFICATIONS

DAY = 86400


@pytest.fixture
async def bus(mesh):
    events = await mesh.events("retention-test")
    yield events
    await events.connection.close()


async def test_streams_carry_the_topologys_limits(mesh, bus):
    assert mesh.topo.retention.streams     # the topology names some
    for name, limits in mesh.topo.retention.streams.items():
        config = (await bus.jetstream.stream_info(name)).config
        assert (config.max_age, config.max_bytes, config.discard) == (
            limits.max_age_s, limits.max_bytes, limits.discard), name


async def test_a_short_max_age_expires_messages_and_apply_restores_the_limits(mesh, bus):
    subject = f"deadletter.retention-{uuid.uuid4().hex[:6]}"
    await bus.jetstream.publish(subject, b"expires soon")
    kept = mesh.topo.retention.streams["DEAD_LETTERS"]
    changed = await bus.ensure_streams({"DEAD_LETTERS": StreamLimits(2, kept.max_bytes)})
    try:
        assert changed == ["DEAD_LETTERS"]

        async def left() -> int:
            return (await bus.jetstream.stream_info("DEAD_LETTERS", subjects_filter=subject)).state.messages
        deadline = time.monotonic() + 30
        while await left():
            assert time.monotonic() < deadline, "the message outlived its max age"
            await asyncio.sleep(0.2)
    finally:
        applied = await asyncio.to_thread(mesh.cli, "apply")
    assert applied.returncode == 0 and "DEAD_LETTERS" in applied.stdout, applied.stdout + applied.stderr
    assert (await bus.jetstream.stream_info("DEAD_LETTERS")).config.max_age == kept.max_age_s


async def test_pruning_removes_only_expired_notifications(mesh, postgres):
    notify = await postgres("notify")
    max_age = mesh.topo.retention.tables["notifications"]
    user = uuid.uuid4()
    ages = {"expired": max_age + DAY, "young": max_age - DAY, "new": 0}
    for name, age in ages.items():
        await notify.execute(
            "INSERT INTO notifications (id, event_id, user_id, kind, title, body, created_at)"
            " VALUES ($1, $2, $3, 'test', $4, '', now() - make_interval(secs => $5))",
            uuid.uuid4(), f"retention-{uuid.uuid4().hex}", user, name, float(age))
    pruned = await Pruning(notify, "notifications", max_age, delete=PRUNE_NOTIFICATIONS,
                           count=NOTIFICATIONS).run_once()
    left = {r["title"] for r in await notify.fetch("SELECT title FROM notifications WHERE user_id = $1", user)}
    assert pruned >= 1 and left == {"young", "new"}


async def test_pruning_removes_a_conversation_only_when_its_last_turn_expired(mesh, postgres):
    chat = await postgres("chat")
    max_age = mesh.topo.retention.tables["conversations"]
    user = uuid.uuid4()
    conversations = {"stale": [max_age + 2 * DAY, max_age + DAY], "resumed": [max_age + DAY, DAY],
                     "recent": [DAY]}
    ids = {}
    for name, turn_ages in conversations.items():
        ids[name] = uuid.uuid4()
        await chat.execute("INSERT INTO conversations (id, user_id, created_at)"
                           " VALUES ($1, $2, now() - make_interval(secs => $3))",
                           ids[name], user, float(turn_ages[0]))
        for age in turn_ages:
            await chat.execute(
                "INSERT INTO turns (id, conversation_id, question, answer, finish_reason, source, created_at)"
                " VALUES ($1, $2, 'q', 'a', 'FINISH_REASON_STOP', 'SOURCE_MODEL',"
                " now() - make_interval(secs => $3))", uuid.uuid4(), ids[name], float(age))
    await Pruning(chat, "conversations", max_age, delete=PRUNE_CONVERSATIONS, count=CONVERSATIONS).run_once()
    left = {r["id"] for r in await chat.fetch("SELECT id FROM conversations WHERE user_id = $1", user)}
    assert left == {ids["resumed"], ids["recent"]}
    assert await chat.fetchval("SELECT count(*) FROM turns WHERE conversation_id = $1", ids["stale"]) == 0


def test_services_report_rows_kept_by_their_pruning_job(mesh):
    for service, table in (("notify", "notifications"), ("chat", "conversations")):
        port = mesh.topo.services[service].instances[0].metrics_port
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            text = reply.read().decode()
        assert f'aimesh_rows_kept{{table="{table}"}}' in text, service
        assert f'aimesh_rows_pruned_total{{table="{table}"}}' in text, service


async def test_a_redelivery_inside_the_dedupe_window_is_applied_once_and_an_older_event_never(
        mesh, bus, postgres):
    notify = await postgres("notify")

    def registered(user_id: str, age_s: float = 0) -> events_pb2.Envelope:
        event = envelope("user.registered", events_pb2.UserRegistered(user_id=user_id, display_name="R"))
        event.time.FromNanoseconds(event.time.ToNanoseconds() - int(age_s * 1e9))
        return event

    async def deliver(event: events_pb2.Envelope) -> None:   # as a redelivery would: a new message
        await bus.jetstream.publish("user.registered", event.SerializeToString(),
                                    headers={"Nats-Msg-Id": uuid.uuid4().hex})

    async def notifications(user_id: str) -> int:
        return await notify.fetchval("SELECT count(*) FROM notifications WHERE user_id = $1",
                                     uuid.UUID(user_id))

    window = mesh.topo.retention.tables["notifications"]
    recent, old = str(uuid.uuid4()), str(uuid.uuid4())
    event = registered(recent, age_s=window - DAY)          # old, but inside the window
    await deliver(event)
    await deliver(event)
    await deliver(registered(old, age_s=window + DAY))      # past the window: it may be forgotten
    canary = str(uuid.uuid4())
    await deliver(registered(canary))                       # delivered after the others
    deadline = time.monotonic() + 30
    while await notifications(canary) == 0:
        assert time.monotonic() < deadline, "notify-svc did not take the events"
        await asyncio.sleep(0.2)
    assert await notifications(recent) == 1 and await notifications(old) == 0
