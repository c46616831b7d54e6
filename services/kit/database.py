"""Postgres for a service: its own schema, migrations applied on start, one pool."""
from __future__ import annotations

import asyncpg

# A database that is down, restarting or unreachable (not a bad query): the call is UNAVAILABLE,
# which a client may retry, rather than INTERNAL. asyncpg's InternalClientError is what a pooled
# connection whose server died mid-operation raises at its next use ("cannot switch to state 15;
# another operation is in progress"): seen when Postgres is SIGKILLed under load.
UNREACHABLE = (asyncpg.PostgresConnectionError, asyncpg.exceptions.OperatorInterventionError,
               asyncpg.InterfaceError, asyncpg.exceptions.InternalClientError, ConnectionError,
               TimeoutError)


def unreachable(error: BaseException) -> bool:
    return isinstance(error, UNREACHABLE)


class _Connection(asyncpg.Connection):
    """No reset query when a pooled connection is released: asyncpg's default (unlock advisory
    locks, close cursors, UNLISTEN, RESET ALL) is a second round trip after every query, and no
    service leaves any of those behind (advisory locks are transaction-scoped, settings are the
    pool's). An open transaction is still rolled back on release."""

    def get_reset_query(self) -> str:
        return ""


async def connect(dsn: str, schema: str, migrations: list[str], *, min_size: int = 1,
                  max_size: int = 10, init=None) -> asyncpg.Pool:
    """Open a pool whose search_path is the service's schema, after applying new migrations.

    Migrations are numbered by position and each runs once, in one transaction, under an
    advisory lock, so two instances of a service starting together do not race. `init` runs
    on each new connection of the pool (type codecs)."""
    setup = await asyncpg.connect(dsn)
    try:
        async with setup.transaction():
            await setup.execute("SELECT pg_advisory_xact_lock(hashtext($1))", schema)
            # The runner makes a service's schema, owned by the service's role, which may not
            # create schemas; only a superuser's connection (a test's own schema) makes one here.
            if not await setup.fetchval("SELECT 1 FROM pg_namespace WHERE nspname = $1", schema):
                await setup.execute(f'CREATE SCHEMA "{schema}"')
            await setup.execute(f'SET LOCAL search_path TO "{schema}", public')
            await setup.execute("CREATE TABLE IF NOT EXISTS schema_migrations ("
                                "version int PRIMARY KEY, applied_at timestamptz DEFAULT now())")
            applied = {r["version"] for r in await setup.fetch("SELECT version FROM schema_migrations")}
            for version, sql in enumerate(migrations, start=1):
                if version not in applied:
                    await setup.execute(sql)
                    await setup.execute("INSERT INTO schema_migrations (version) VALUES ($1)",
                                        version)
    finally:
        await setup.close()
    return await asyncpg.create_pool(
        dsn, min_size=min_size, max_size=max_size, command_timeout=10, connection_class=_Connection,
        init=init,
        server_settings={"search_path": f'"{schema}", public'})


async def listener(dsn: str, channel: str, callback) -> asyncpg.Connection:
    """A connection of its own that LISTENs on `channel` (a pooled one would be reused)."""
    connection = await asyncpg.connect(dsn)
    await connection.add_listener(channel, callback)
    return connection
