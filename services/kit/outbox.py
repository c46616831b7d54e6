"""The transactional outbox: an event is written in the same database transaction as the change
it announces, and published to NATS after the commit. A crash between the two delays the event
instead of losing it; a row published twice is dropped by JetStream (Nats-Msg-Id = event id)."""
from __future__ import annotations

import asyncio
import contextlib
import logging

import asyncpg
import nats
from google.protobuf.message import Message

from aimesh.events.v1 import events_pb2

from .database import UNREACHABLE
from .events import Events, envelope

log = logging.getLogger("aimesh.outbox")

# Add to a service's migrations (last, as its next version) to give it an outbox.
MIGRATION = """
CREATE TABLE outbox (
    event_id   text PRIMARY KEY,
    subject    text NOT NULL,
    envelope   bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
"""
BATCH = 100
POLL_S = 1.0      # a row a crashed instance left behind is relayed within this
LINGER_S = 0.05   # after a commit, wait this long for more: one relay then carries them all


class Outbox:
    def __init__(self, pool: asyncpg.Pool, events: Events):
        self.pool, self.events = pool, events
        self._pending = asyncio.Event()
        self._appended: list[tuple[events_pb2.Envelope, asyncio.Future]] = []
        self._writer: asyncio.Task | None = None

    async def add(self, connection: asyncpg.Connection, subject: str,
                  payload: Message) -> events_pb2.Envelope:
        """Write the event in the caller's transaction; it is published once that commits."""
        event = envelope(subject, payload)
        await connection.execute(
            "INSERT INTO outbox (event_id, subject, envelope) VALUES ($1, $2, $3)",
            event.event_id, subject, event.SerializeToString())
        self._pending.set()
        return event

    async def append(self, subject: str, payload: Message) -> events_pb2.Envelope:
        """An event that joins no change of the service's (an audit record): written without
        NATS, so the call that made it goes on while NATS is down, and relayed like the rest.
        Returns once its row is committed. Group commit: the events appended while a write is
        in flight go together in the next one (one statement, one commit), so under load a
        call pays for a share of a round trip, and alone for exactly one."""
        event = envelope(subject, payload)
        written = asyncio.get_running_loop().create_future()
        self._appended.append((event, written))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.ensure_future(self._write_appended())
        await written
        return event

    async def _write_appended(self) -> None:
        while self._appended:
            batch, self._appended = self._appended, []
            events = [event for event, _ in batch]
            try:
                await self.pool.execute(
                    "INSERT INTO outbox (event_id, subject, envelope)"
                    " SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[])",
                    [e.event_id for e in events], [e.type for e in events],
                    [e.SerializeToString() for e in events])
            except Exception as failure:   # each caller fails as its own write would have
                outcome: BaseException | None = failure
            else:
                outcome = None
                self._pending.set()
            for _, written in batch:
                if written.done():   # its caller was cancelled
                    continue
                if outcome is None:
                    written.set_result(None)
                else:
                    written.set_exception(outcome)

    async def relay(self) -> int:
        """Publish what is waiting, oldest first; each row is deleted once JetStream has it.
        Instances sharing the table skip each other's locked rows."""
        async with self.pool.acquire() as connection, connection.transaction():
            rows = await connection.fetch(
                "SELECT event_id, subject, envelope FROM outbox ORDER BY created_at"
                " LIMIT $1 FOR UPDATE SKIP LOCKED", BATCH)
            if not rows:
                return 0
            jetstream = self.events.jetstream
            await asyncio.gather(*(   # pipelined: one wait for the batch's acks, not one per row
                jetstream.publish(row["subject"], row["envelope"], headers={"Nats-Msg-Id": row["event_id"]})
                for row in rows))
            await connection.execute("DELETE FROM outbox WHERE event_id = ANY($1::text[])",
                                     [row["event_id"] for row in rows])
        return len(rows)

    async def run(self, stop: asyncio.Event) -> None:
        """Relay until `stop`: LINGER_S after a commit that added events, else every POLL_S.
        (A relay is several round trips; under load, lingering makes it one per batch of events
        rather than one per event, for a delay of 50 ms.)"""
        while not stop.is_set():
            if self._pending.is_set():
                await asyncio.sleep(LINGER_S)
            self._pending.clear()
            try:
                while await self.relay() == BATCH:
                    pass
            except (nats.errors.Error, OSError, *UNREACHABLE) as failure:   # NATS or Postgres away
                log.warning("publishing the outbox failed; will retry: %s", failure)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._pending.wait(), POLL_S)
