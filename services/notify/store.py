"""The notification inbox in notify-svc's schema; one notification per event at most."""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

import asyncpg

MIGRATIONS = [
    """
    CREATE TABLE notifications (
        id         uuid PRIMARY KEY,
        event_id   text NOT NULL UNIQUE,   -- a redelivered event makes no duplicate
        user_id    uuid NOT NULL,
        kind       text NOT NULL,
        title      text NOT NULL,
        body       text NOT NULL,
        read       boolean NOT NULL DEFAULT false,
        created_at timestamptz NOT NULL DEFAULT now()
    );
    CREATE INDEX notifications_by_user ON notifications (user_id, created_at DESC);
    """,
    # retention: notifications are pruned by age (PRUNE), found through their time
    "CREATE INDEX notifications_by_time ON notifications (created_at);",
]

# At most $2 notifications older than $1, oldest first. Their event ids go with them: the topology
# keeps notifications longer than USERS and JOB_EVENTS keep events, so no redelivery outlives them.
PRUNE = """
DELETE FROM notifications WHERE id IN (
    SELECT id FROM notifications WHERE created_at < $1 ORDER BY created_at LIMIT $2
) RETURNING id
"""
COUNT = "SELECT count(*) FROM notifications"


@dataclass(frozen=True)
class Notification:
    id: str
    user_id: str
    kind: str
    title: str
    body: str
    read: bool
    created_at: datetime


def _notification(row) -> Notification:
    return Notification(id=str(row["id"]), user_id=str(row["user_id"]), kind=row["kind"],
                        title=row["title"], body=row["body"], read=row["read"],
                        created_at=row["created_at"])


class Inbox:
    def __init__(self, pool: asyncpg.Pool):
        self.pool = pool

    async def add(self, event_id: str, user_id: str, kind: str, title: str,
                  body: str) -> Notification | None:
        """Store the notification for an event; None when that event was already stored."""
        row = await self.pool.fetchrow(
            "INSERT INTO notifications (id, event_id, user_id, kind, title, body)"
            " VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (event_id) DO NOTHING RETURNING *",
            uuid.uuid4(), event_id, uuid.UUID(user_id), kind, title, body)
        return None if row is None else _notification(row)

    async def page(self, user_id: str, *, limit: int, offset: int,
                   unread_only: bool) -> list[Notification]:
        rows = await self.pool.fetch(
            "SELECT * FROM notifications WHERE user_id = $1 AND (NOT $2 OR NOT read)"
            " ORDER BY created_at DESC, id LIMIT $3 OFFSET $4",
            uuid.UUID(user_id), unread_only, limit, offset)
        return [_notification(r) for r in rows]

    async def mark_read(self, user_id: str, notification_ids: list[uuid.UUID]) -> int:
        """Only the caller's own notifications change; others' ids are ignored."""
        status = await self.pool.execute(
            "UPDATE notifications SET read = true"
            " WHERE user_id = $1 AND id = ANY($2::uuid[]) AND NOT read",
            uuid.UUID(user_id), notification_ids)
        return int(status.split()[-1])
