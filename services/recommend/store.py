"""Items, their popularity and each user's history, in recommend-svc's schema."""
from __future__ import annotations

import uuid
from dataclasses import dataclass

import asyncpg

from services.kit import outbox

MIGRATIONS = [
    """
    CREATE TABLE items (
        item_id    bigint PRIMARY KEY,
        title      text NOT NULL,
        -- interactions before the mesh existed (MovieLens ratings); live ones add to it
        base_count int NOT NULL DEFAULT 0
    );
    CREATE TABLE history (
        event_id   text PRIMARY KEY,      -- idempotent consumption: one row per event
        user_id    uuid NOT NULL,
        item_id    bigint NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now()
    );
    CREATE INDEX history_by_user ON history (user_id, created_at DESC);
    """,
    outbox.MIGRATION,   # for the audit of its decisions
]


@dataclass(frozen=True)
class Purchase:
    event_id: str     # of the user.purchased event that recorded it
    item_id: int


@dataclass(frozen=True)
class Item:
    item_id: int
    title: str
    score: float


class RecommendStore:
    def __init__(self, pool: asyncpg.Pool):
        self.pool = pool
        self._titles: dict[int, str] = {}   # read once per item: a title never changes once added

    async def add_items(self, items: list[tuple[int, str, int]]) -> None:
        await self.pool.executemany(
            "INSERT INTO items (item_id, title, base_count) VALUES ($1, $2, $3)"
            " ON CONFLICT (item_id) DO NOTHING", items)

    async def record(self, user_id: str, purchase: Purchase) -> bool:
        """Add one interaction; False when this event was already recorded."""
        status = await self.pool.execute(
            "INSERT INTO history (event_id, user_id, item_id) VALUES ($1, $2, $3)"
            " ON CONFLICT (event_id) DO NOTHING", purchase.event_id, uuid.UUID(user_id),
            purchase.item_id)
        return status.endswith(" 1")

    async def recent(self, user_id: str, limit: int = 50) -> list[Purchase]:
        """Newest first."""
        rows = await self.pool.fetch(
            "SELECT event_id, item_id FROM history WHERE user_id = $1"
            " ORDER BY created_at DESC LIMIT $2", uuid.UUID(user_id), limit)
        return [Purchase(r["event_id"], r["item_id"]) for r in rows]

    async def titles(self, item_ids: list[int]) -> dict[int, str]:
        if missing := [i for i in item_ids if i not in self._titles]:
            rows = await self.pool.fetch(
                "SELECT item_id, title FROM items WHERE item_id = ANY($1::bigint[])", missing)
            self._titles.update((r["item_id"], r["title"]) for r in rows)
        return {i: self._titles[i] for i in item_ids if i in self._titles}

    async def popular(self, limit: int, exclude: list[int]) -> list[Item]:
        rows = await self.pool.fetch(
            "SELECT i.item_id, i.title, i.base_count + count(h.event_id) AS interactions"
            " FROM items i LEFT JOIN history h ON h.item_id = i.item_id"
            " WHERE NOT (i.item_id = ANY($2::bigint[]))"
            " GROUP BY i.item_id ORDER BY interactions DESC, i.item_id LIMIT $1",
            limit, exclude)
        top = max((r["interactions"] for r in rows), default=1) or 1
        return [Item(r["item_id"], r["title"], r["interactions"] / top) for r in rows]
