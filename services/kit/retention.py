"""How long each kind of data lives (the topology's `retention:` block), and the pruning job that
holds a service's growing table to it.

Streams are limited by JetStream itself (max age, max bytes, what to discard when full; applied by
events.Events.ensure_streams). Tables are pruned by the service that owns them: expired rows are
deleted in bounded batches, periodically, with a metric of rows pruned and rows kept."""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from dataclasses import asdict, dataclass, field

import asyncpg
from prometheus_client import Counter, Gauge

from .database import UNREACHABLE

log = logging.getLogger("aimesh.retention")

UNITS_S = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
UNITS_B = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40}

PRUNED = Counter("aimesh_rows_pruned_total", "Rows deleted by retention, by table", ["table"])
KEPT = Gauge("aimesh_rows_kept", "Rows in a pruned table after its last pruning run", ["table"])


def seconds(text: str | int | float) -> float:
    """'30d', '12h', '90s', '300ms' -> seconds."""
    if isinstance(text, (int, float)):
        return float(text)
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|[smhd])\s*", text)
    if not match:
        raise ValueError(f"a duration is a number and one of ms, s, m, h, d (e.g. 30d), not {text!r}")
    return float(match[1]) * UNITS_S[match[2]]


def size(text: str | int) -> int:
    """'1GiB', '256MiB' -> bytes."""
    if isinstance(text, int):
        return text
    match = re.fullmatch(r"\s*(\d+)\s*(B|KiB|MiB|GiB|TiB)\s*", text)
    if not match:
        raise ValueError(f"a size is a whole number and one of {', '.join(UNITS_B)}, not {text!r}")
    return int(match[1]) * UNITS_B[match[2]]


@dataclass(frozen=True)
class StreamLimits:
    max_age_s: float
    max_bytes: int
    discard: str = "old"      # old: the oldest messages go; new: a publish past the limit is refused


@dataclass(frozen=True)
class Retention:
    streams: dict[str, StreamLimits] = field(default_factory=dict)
    tables: dict[str, float] = field(default_factory=dict)     # table -> max age, seconds
    prune_every_s: float = 600.0

    @classmethod
    def parse(cls, raw: dict) -> Retention:
        """From the topology's block: durations like 30d, sizes like 1GiB. A table that holds a
        consumer's processed event ids names the streams it `dedupes`: it must keep its rows longer
        than those streams keep their messages, or a redelivered event could be applied twice."""
        streams = {}
        for name, limits in (raw.get("streams") or {}).items():
            discard = limits.get("discard", "old")
            if discard not in ("old", "new"):
                raise ValueError(f"retention.streams.{name}.discard must be old or new, not {discard!r}")
            streams[name] = StreamLimits(seconds(limits["max_age"]), size(limits["max_bytes"]), discard)
        tables = {}
        for name, table in (raw.get("tables") or {}).items():
            tables[name] = seconds(table["max_age"])
            for stream in table.get("dedupes", ()):
                if stream not in streams:
                    raise ValueError(f"retention.tables.{name} dedupes {stream}, which has no retention")
                if streams[stream].max_age_s >= tables[name]:
                    raise ValueError(f"retention.tables.{name} ({table['max_age']}) must outlive "
                                     f"{stream}'s messages, or a redelivery could apply twice")
        return cls(streams, tables, seconds(raw.get("prune_every", "10m")))

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Retention:
        if not text:
            return cls()
        raw = json.loads(text)
        return cls({name: StreamLimits(**limits) for name, limits in raw["streams"].items()},
                   raw["tables"], raw["prune_every_s"])


class Pruning:
    """Deletes a table's rows older than its retention, at most `batch` rows per statement and
    `batches` statements per run, so a run never holds locks long or falls behind by much.

    `delete` is the owning service's statement: $1 the cutoff (timestamptz), $2 the batch size; it
    deletes at most $2 expired rows (through an index on their time) and returns one row per
    deleted row. `count` returns the rows kept."""

    def __init__(self, pool: asyncpg.Pool, table: str, max_age_s: float, *, delete: str, count: str,
                 batch: int = 1000, batches: int = 20):
        self.pool, self.table, self.max_age_s = pool, table, max_age_s
        self.delete, self.count = delete, count
        self.batch, self.batches = batch, batches

    async def run_once(self) -> int:
        """One pruning run: rows deleted."""
        pruned = 0
        async with self.pool.acquire() as connection:
            cutoff = await connection.fetchval(
                "SELECT now() - make_interval(secs => $1)", self.max_age_s)
            for _ in range(self.batches):
                deleted = len(await connection.fetch(self.delete, cutoff, self.batch))
                pruned += deleted
                if deleted < self.batch:
                    break
            kept = await connection.fetchval(self.count)
        PRUNED.labels(self.table).inc(pruned)
        KEPT.labels(self.table).set(kept)
        if pruned:
            log.info("pruned expired rows", extra={"fields": {"table": self.table, "rows": pruned,
                                                              "kept": kept}})
        return pruned

    async def run(self, every_s: float, stop: asyncio.Event) -> None:
        """Prune now, then every `every_s`, until `stop`; a failed run is retried next time."""
        while not stop.is_set():
            try:
                await self.run_once()
            except (asyncpg.PostgresError, OSError, *UNREACHABLE) as failure:
                log.warning("pruning failed; will retry: %s", failure,
                            extra={"fields": {"table": self.table}})
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), every_s)
