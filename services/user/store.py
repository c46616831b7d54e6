"""Accounts, purchases and signing keys in user-svc's own schema."""
from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from services.kit import outbox

MIGRATIONS = [
    """
    CREATE TABLE users (
        id            uuid PRIMARY KEY,
        email         text NOT NULL UNIQUE,
        password_hash text NOT NULL,
        display_name  text NOT NULL,
        tier          text NOT NULL DEFAULT 'free' CHECK (tier IN ('free', 'pro')),
        role          text NOT NULL DEFAULT 'user' CHECK (role IN ('user', 'admin')),
        created_at    timestamptz NOT NULL DEFAULT now()
    );
    CREATE TABLE purchases (
        id         uuid PRIMARY KEY,
        user_id    uuid NOT NULL REFERENCES users (id),
        item_id    bigint NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now()
    );
    CREATE INDEX purchases_by_user ON purchases (user_id, created_at DESC);
    """,
    outbox.MIGRATION,
    """
    CREATE TABLE signing_keys (            -- the token signing keys (tokens.KeyStore)
        kid         text PRIMARY KEY,      -- starts with its creation time: sorts oldest first
        private_pem bytea NOT NULL
    );
    """,
]


@dataclass(frozen=True)
class User:
    id: str
    email: str
    password_hash: str
    display_name: str
    tier: str
    role: str
    created_at: datetime


@dataclass(frozen=True)
class Purchase:
    id: str
    user_id: str
    item_id: int
    created_at: datetime


class EmailTaken(Exception):
    pass


def _user(row) -> User | None:
    return None if row is None else _existing_user(row)


def _existing_user(row) -> User:
    """A row the statement just wrote (RETURNING *): there always is one."""
    return User(**{**dict(row), "id": str(row["id"])})


# Writes the event that announces a change, on the transaction's connection (an outbox).
Announce = Callable[[asyncpg.Connection, Any], Awaitable[None]]


class UserStore:
    def __init__(self, pool: asyncpg.Pool):
        self.pool = pool

    async def create(self, email: str, password_hash: str, display_name: str, *,
                     tier: str = "free", role: str = "user", announce: Announce | None = None) -> User:
        """A new account, and its announcement (`announce`) in the same transaction."""
        try:
            async with self.pool.acquire() as connection, connection.transaction():
                user = _existing_user(await connection.fetchrow(
                    "INSERT INTO users (id, email, password_hash, display_name, tier, role)"
                    " VALUES ($1, $2, $3, $4, $5, $6) RETURNING *",
                    uuid.uuid4(), email, password_hash, display_name, tier, role))
                if announce:
                    await announce(connection, user)
        except asyncpg.UniqueViolationError as taken:
            raise EmailTaken(email) from taken
        return user

    async def by_email(self, email: str) -> User | None:
        return _user(await self.pool.fetchrow("SELECT * FROM users WHERE email = $1", email))

    async def by_id(self, user_id: str) -> User | None:
        return _user(await self.pool.fetchrow("SELECT * FROM users WHERE id = $1",
                                              uuid.UUID(user_id)))

    async def rename(self, user_id: str, display_name: str) -> User | None:
        return _user(await self.pool.fetchrow(
            "UPDATE users SET display_name = $2 WHERE id = $1 RETURNING *",
            uuid.UUID(user_id), display_name))

    async def an_admin(self) -> User | None:
        return _user(await self.pool.fetchrow("SELECT * FROM users WHERE role = 'admin' LIMIT 1"))

    async def set_access(self, email: str, *, tier: str | None, role: str | None) -> User | None:
        return _user(await self.pool.fetchrow(
            "UPDATE users SET tier = coalesce($2, tier), role = coalesce($3, role)"
            " WHERE email = $1 RETURNING *", email, tier, role))

    async def record_purchase(self, user_id: str, item_id: int, announce: Announce) -> Purchase:
        """The purchase, and its announcement in the same transaction."""
        async with self.pool.acquire() as connection, connection.transaction():
            row = await connection.fetchrow(
                "INSERT INTO purchases (id, user_id, item_id) VALUES ($1, $2, $3) RETURNING *",
                uuid.uuid4(), uuid.UUID(user_id), item_id)
            purchase = Purchase(id=str(row["id"]), user_id=user_id, item_id=row["item_id"],
                                created_at=row["created_at"])
            await announce(connection, purchase)
        return purchase

    async def import_purchases(self, user_id: str, bought: list[tuple[int, datetime]],
                               announce: Announce) -> bool:
        """Past purchases (item id, when) brought in for an account that has none yet, each
        announced in the same transaction; False, and nothing written, when it has some."""
        async with self.pool.acquire() as connection, connection.transaction():
            # The account's row lock: two instances importing at once write it once.
            await connection.execute("SELECT 1 FROM users WHERE id = $1 FOR UPDATE", uuid.UUID(user_id))
            if await connection.fetchval("SELECT EXISTS (SELECT 1 FROM purchases WHERE user_id = $1)",
                                         uuid.UUID(user_id)):
                return False
            for item_id, when in bought:
                row = await connection.fetchrow(
                    "INSERT INTO purchases (id, user_id, item_id, created_at) VALUES ($1, $2, $3, $4)"
                    " RETURNING *", uuid.uuid4(), uuid.UUID(user_id), item_id, when)
                await announce(connection, Purchase(id=str(row["id"]), user_id=user_id,
                                                    item_id=item_id, created_at=row["created_at"]))
        return True
