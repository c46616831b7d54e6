"""Conversations and their turns, in chat-svc's schema."""
from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import asyncpg

from services.kit import outbox

MIGRATIONS = [
    """
    CREATE TABLE conversations (
        id         uuid PRIMARY KEY,
        user_id    uuid NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now()
    );
    CREATE TABLE turns (
        id              uuid PRIMARY KEY,
        conversation_id uuid NOT NULL REFERENCES conversations (id),
        question        text NOT NULL,
        answer          text NOT NULL,
        finish_reason   text NOT NULL,
        source          text NOT NULL,
        created_at      timestamptz NOT NULL DEFAULT now()
    );
    CREATE INDEX turns_by_conversation ON turns (conversation_id, created_at);
    """,
    outbox.MIGRATION,
    # retention: conversations are pruned by age (PRUNE), found through their time
    "CREATE INDEX conversations_by_time ON conversations (created_at);",
    # what the model was given with each question, so a later turn's prompt repeats it as read
    "ALTER TABLE turns ADD COLUMN catalog text NOT NULL DEFAULT '';",
]

# A conversation expires when it and its last turn are older than the retention: it goes with its
# turns, at most $2 conversations per statement, oldest first ($1: the cutoff).
PRUNE = """
WITH expired AS (
    SELECT c.id FROM conversations c
    WHERE c.created_at < $1
      AND NOT EXISTS (SELECT 1 FROM turns t WHERE t.conversation_id = c.id AND t.created_at >= $1)
    ORDER BY c.created_at LIMIT $2
), turns_gone AS (
    DELETE FROM turns WHERE conversation_id IN (SELECT id FROM expired)
)
DELETE FROM conversations WHERE id IN (SELECT id FROM expired) RETURNING id
"""
COUNT = "SELECT count(*) FROM conversations"


@dataclass(frozen=True)
class Turn:
    question: str
    catalog: str      # the catalog entries the model was given with the question, as it read them
    answer: str


class ConversationStore:
    def __init__(self, pool: asyncpg.Pool):
        self.pool = pool

    async def open(self, user_id: str, conversation_id: str) -> str | None:
        """The conversation to continue (the caller's own only), or a new one when none is
        named. None when the id is not one of the caller's conversations."""
        if not conversation_id:
            new = uuid.uuid4()
            await self.pool.execute("INSERT INTO conversations (id, user_id) VALUES ($1, $2)",
                                    new, uuid.UUID(user_id))
            return str(new)
        try:
            wanted = uuid.UUID(conversation_id)
        except ValueError:
            return None
        found = await self.pool.fetchval(
            "SELECT id FROM conversations WHERE id = $1 AND user_id = $2", wanted, uuid.UUID(user_id))
        return None if found is None else str(found)

    async def add_turn(self, conversation_id: str, turn: Turn, finish_reason: str, source: str,
                       audit: Callable[[asyncpg.Connection], Awaitable[None]]) -> str:
        """Store the turn, and its audit record (`audit`) in the same transaction."""
        turn_id = uuid.uuid4()
        async with self.pool.acquire() as connection, connection.transaction():
            await connection.execute(
                "INSERT INTO turns (id, conversation_id, question, catalog, answer, finish_reason, source)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7)", turn_id, uuid.UUID(conversation_id),
                turn.question, turn.catalog, turn.answer, finish_reason, source)
            await audit(connection)
        return str(turn_id)

    async def window(self, conversation_id: str, size: int) -> list[Turn]:
        """The earlier turns the model sees again, oldest first: the last `size` to 2 × size − 1.
        The oldest leave `size` at a time, so for `size` turns in a row a prompt begins as the one
        before did and the engine goes on from what it read then (a window moving every turn would
        have it read the whole conversation again each turn)."""
        rows = await self.pool.fetch(
            "SELECT question, catalog, answer, count(*) OVER () AS total FROM turns"
            " WHERE conversation_id = $1 ORDER BY created_at DESC LIMIT $2",
            uuid.UUID(conversation_id), 2 * size - 1)
        if not rows:
            return []
        total = rows[0]["total"]
        start = max(0, total - size) // size * size
        return [Turn(r["question"], r["catalog"], r["answer"]) for r in reversed(rows[:total - start])]
