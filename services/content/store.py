"""Content and its saga in content-svc's schema. Every change of a saga is one transaction,
fenced by the lease of the instance running it: an instance that lost its lease (it was too slow,
or another took the saga over) changes nothing more, so no step is recorded twice."""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from services.kit import outbox

STEPS = ("reserve", "check_prompt", "generate", "check_text", "index", "publish")
RUNNING = ("draft", "compensating")
FINAL = ("published", "rejected", "failed", "cancelled", "deleted")
CHANGED = "content_changed"   # the channel a change is announced on (LISTEN/NOTIFY), with the id

MIGRATIONS = [
    f"""
    CREATE TABLE contents (
        id               uuid PRIMARY KEY,
        owner            uuid NOT NULL,
        kind             text NOT NULL,
        prompt           text NOT NULL,
        state            text NOT NULL CHECK (state IN ('draft', 'compensating', 'published',
                                                        'rejected', 'failed', 'cancelled', 'deleted')),
        ends_as          text NOT NULL DEFAULT '',     -- while compensating: the final state
        reason           text NOT NULL DEFAULT '',
        draft            text,                         -- the generate step's effect, until published
        text             text NOT NULL DEFAULT '',
        cancel_requested boolean NOT NULL DEFAULT false,
        holder           text,                         -- the instance running it, while its lease lasts
        lease_until      timestamptz,
        deadline         timestamptz NOT NULL,
        traceparent      text NOT NULL DEFAULT '',     -- of CreateContent: the saga's spans join its trace
        created_at       timestamptz NOT NULL DEFAULT now(),
        updated_at       timestamptz NOT NULL DEFAULT now()
    );
    CREATE INDEX contents_by_owner ON contents (owner, created_at DESC);
    CREATE INDEX contents_running ON contents (created_at) WHERE state IN ('draft', 'compensating');
    CREATE TABLE content_steps (
        content_id uuid NOT NULL REFERENCES contents (id) ON DELETE CASCADE,
        seq        int NOT NULL,
        name       text NOT NULL,
        state      text NOT NULL DEFAULT 'pending'
                   CHECK (state IN ('pending', 'running', 'done', 'failed', 'compensated')),
        attempts   int NOT NULL DEFAULT 0,
        outcome    text NOT NULL DEFAULT '',
        ran_by     text NOT NULL DEFAULT '',    -- the instance that ran it last
        started_at timestamptz,
        ended_at   timestamptz,
        PRIMARY KEY (content_id, seq)
    );
    CREATE FUNCTION announce_content() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM pg_notify('{CHANGED}', NEW.id::text);
        RETURN NULL;
    END $$;
    """,
    outbox.MIGRATION,
    f"""
    -- Watchers learn of a change at its commit (pg_notify is transactional).
    CREATE TRIGGER contents_changed AFTER INSERT OR UPDATE ON contents
        FOR EACH ROW EXECUTE FUNCTION announce_content();
    CREATE FUNCTION announce_step() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM pg_notify('{CHANGED}', NEW.content_id::text);
        RETURN NULL;
    END $$;
    CREATE TRIGGER steps_changed AFTER UPDATE ON content_steps
        FOR EACH ROW EXECUTE FUNCTION announce_step();
    """,
]


@dataclass(frozen=True)
class Step:
    seq: int
    name: str
    state: str        # pending | running | done | failed | compensated
    attempts: int
    outcome: str
    ran_by: str
    started_at: datetime | None
    ended_at: datetime | None


@dataclass(frozen=True)
class Content:
    id: str
    owner: str
    kind: str
    prompt: str
    state: str
    ends_as: str
    reason: str
    draft: str | None
    text: str
    cancel_requested: bool
    deadline: datetime
    traceparent: str
    created_at: datetime
    updated_at: datetime
    steps: tuple[Step, ...] = ()

    @property
    def final(self) -> bool:
        return self.state in FINAL

    def step(self, name: str) -> Step:
        return next(s for s in self.steps if s.name == name)


class LeaseLost(Exception):
    """This instance no longer holds the saga: another runs it now."""


def _content(row, steps: list) -> Content:
    return Content(id=str(row["id"]), owner=str(row["owner"]), kind=row["kind"], prompt=row["prompt"],
                   state=row["state"], ends_as=row["ends_as"], reason=row["reason"], draft=row["draft"],
                   text=row["text"], cancel_requested=row["cancel_requested"], deadline=row["deadline"],
                   traceparent=row["traceparent"],
                   created_at=row["created_at"], updated_at=row["updated_at"],
                   steps=tuple(Step(s["seq"], s["name"], s["state"], s["attempts"], s["outcome"],
                                    s["ran_by"], s["started_at"], s["ended_at"]) for s in steps))


class ContentStore:
    def __init__(self, pool: asyncpg.Pool):
        self.pool = pool

    async def create(self, owner: str, kind: str, prompt: str, deadline_s: float,
                     per_user: int, by: str, traceparent: str = "") -> Content | None:
        """Step 1 of the saga, reserve: the record, DRAFT, with its steps pending. None when the
        owner already has `per_user` pieces running (0: no cap)."""
        content_id = uuid.uuid4()
        async with self.pool.acquire() as connection, connection.transaction():
            # One owner's creations one at a time, so two cannot both pass the count.
            await connection.execute("SELECT pg_advisory_xact_lock(hashtext($1))", owner)
            running = await connection.fetchval(
                "SELECT count(*) FROM contents WHERE owner = $1 AND state IN ('draft', 'compensating')",
                uuid.UUID(owner))
            if per_user and running >= per_user:
                return None
            await connection.execute(
                "INSERT INTO contents (id, owner, kind, prompt, state, deadline, traceparent)"
                " VALUES ($1, $2, $3, $4, 'draft', now() + make_interval(secs => $5), $6)",
                content_id, uuid.UUID(owner), kind, prompt, deadline_s, traceparent)
            await connection.execute(
                "INSERT INTO content_steps (content_id, seq, name) SELECT $1, seq - 1, name"
                " FROM unnest($2::text[]) WITH ORDINALITY AS step (name, seq)", content_id, list(STEPS))
            await connection.execute(
                "UPDATE content_steps SET state = 'done', attempts = 1, outcome = 'recorded', ran_by = $2,"
                " started_at = now(), ended_at = now() WHERE content_id = $1 AND name = 'reserve'",
                content_id, by)
        found = await self.get(str(content_id))
        assert found is not None
        return found

    async def get(self, content_id: str, connection=None) -> Content | None:
        db = connection or self.pool
        row = await db.fetchrow("SELECT * FROM contents WHERE id = $1", uuid.UUID(content_id))
        if row is None:
            return None
        steps = await db.fetch("SELECT * FROM content_steps WHERE content_id = $1 ORDER BY seq", row["id"])
        return _content(row, steps)

    async def page(self, *, owner: str | None, limit: int, offset: int) -> list[Content]:
        """An owner's content newest first; or (owner None) every saga, the stuck and failed first."""
        if owner is not None:
            rows = await self.pool.fetch(
                "SELECT * FROM contents WHERE owner = $1 ORDER BY created_at DESC, id LIMIT $2 OFFSET $3",
                uuid.UUID(owner), limit, offset)
        else:
            rows = await self.pool.fetch(
                "SELECT * FROM contents ORDER BY"
                " (state IN ('draft', 'compensating') AND deadline < now()) DESC,"
                " (state = 'failed') DESC, created_at DESC, id LIMIT $1 OFFSET $2", limit, offset)
        steps = await self.pool.fetch(
            "SELECT * FROM content_steps WHERE content_id = ANY($1::uuid[]) ORDER BY seq",
            [r["id"] for r in rows])
        return [_content(r, [s for s in steps if s["content_id"] == r["id"]]) for r in rows]

    async def request_cancel(self, content_id: str) -> Content | None:
        await self.pool.execute(
            "UPDATE contents SET cancel_requested = true, updated_at = now()"
            " WHERE id = $1 AND state = 'draft'", uuid.UUID(content_id))
        return await self.get(content_id)

    # The saga's own changes, each under the lease of `holder`.

    async def claim(self, holder: str, lease_s: float) -> Content | None:
        """The oldest running saga whose lease is free or ran out (its instance died), now held
        by `holder` for `lease_s`."""
        row = await self.pool.fetchrow(
            "UPDATE contents SET holder = $1, lease_until = now() + make_interval(secs => $2)"
            " WHERE id = (SELECT id FROM contents WHERE state IN ('draft', 'compensating')"
            "  AND (lease_until IS NULL OR lease_until < now()) ORDER BY created_at"
            "  LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING id", holder, lease_s)
        return None if row is None else await self.get(str(row["id"]))

    async def renew(self, content_id: str, holder: str, lease_s: float) -> None:
        status = await self.pool.execute(
            "UPDATE contents SET lease_until = now() + make_interval(secs => $3)"
            " WHERE id = $1 AND holder = $2 AND lease_until > now()", uuid.UUID(content_id), holder, lease_s)
        if status.endswith(" 0"):
            raise LeaseLost(content_id)

    async def release(self, content_id: str, holder: str) -> None:
        await self.pool.execute("UPDATE contents SET holder = NULL, lease_until = NULL"
                                " WHERE id = $1 AND holder = $2", uuid.UUID(content_id), holder)

    async def _fenced(self, connection, content_id: str, holder: str) -> None:
        held = await connection.fetchval(
            "SELECT 1 FROM contents WHERE id = $1 AND holder = $2 AND lease_until > now() FOR UPDATE",
            uuid.UUID(content_id), holder)
        if not held:
            raise LeaseLost(content_id)

    async def change(self, content: Content, by: str, *, step: str | None = None,
                     step_state: str | None = None, outcome: str | None = None,
                     announce=None, release: bool = False, **fields) -> Content:
        """One transaction: the saga's fields, one step's state (with its start or end time), and
        the event announcing it (`announce(connection)`, through the outbox) — or nothing, when the
        lease is no longer held `by` this instance. `release`: give the lease up (the saga is final)."""
        if release:
            fields |= {"holder": None, "lease_until": None}
        async with self.pool.acquire() as connection, connection.transaction():
            await self._fenced(connection, content.id, by)
            if fields:
                names = list(fields)
                sets = ", ".join(f"{name} = ${i}" for i, name in enumerate(names, start=2))
                await connection.execute(f"UPDATE contents SET {sets}, updated_at = now() WHERE id = $1",
                                         uuid.UUID(content.id), *fields.values())
            if step is not None:
                await connection.execute(
                    "UPDATE content_steps SET state = $3, outcome = COALESCE($4, outcome),"
                    " attempts = attempts + (CASE WHEN $3 = 'running' THEN 1 ELSE 0 END),"
                    " started_at = CASE WHEN $3 = 'running' THEN now() ELSE started_at END,"
                    " ran_by = CASE WHEN $3 = 'running' THEN $5 ELSE ran_by END,"
                    " ended_at = CASE WHEN $3 = 'running' THEN NULL ELSE now() END"
                    " WHERE content_id = $1 AND name = $2", uuid.UUID(content.id), step, step_state, outcome, by)
            if announce is not None:
                await announce(connection)
            changed = await self.get(content.id, connection)
        assert changed is not None
        return changed

    async def delete_published(self, content_id: str) -> bool:
        """A published piece marked DELETED (its index entry already removed); False when it
        was not published (already deleted)."""
        status = await self.pool.execute(
            "UPDATE contents SET state = 'deleted', text = '', updated_at = now()"
            " WHERE id = $1 AND state = 'published'", uuid.UUID(content_id))
        return not status.endswith(" 0")
