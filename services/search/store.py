"""Documents in search-svc's schema, found by meaning (pgvector HNSW, cosine) and by words
(Postgres full-text search), and by both fused by reciprocal rank."""
from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from datetime import datetime

import asyncpg
import numpy as np

from services.kit import outbox

DIMENSIONS = 384
MIGRATIONS = [
    f"""
    CREATE TABLE documents (
        id         text PRIMARY KEY,
        title      text NOT NULL,
        body       text NOT NULL,
        metadata   jsonb NOT NULL DEFAULT '{{}}',
        embedding  vector({DIMENSIONS}) NOT NULL,
        updated_at timestamptz NOT NULL DEFAULT now()
    );
    CREATE INDEX documents_embedding ON documents USING hnsw (embedding vector_cosine_ops);
    CREATE INDEX documents_metadata ON documents USING gin (metadata jsonb_path_ops);
    """,
    """
    CREATE TABLE jobs (
        id          uuid PRIMARY KEY,
        user_id     uuid NOT NULL,
        state       text NOT NULL CHECK (state IN ('queued', 'running', 'succeeded', 'failed')),
        total_count int NOT NULL,
        done_count  int NOT NULL DEFAULT 0,
        error       text NOT NULL DEFAULT '',
        created_at  timestamptz NOT NULL DEFAULT now(),
        updated_at  timestamptz NOT NULL DEFAULT now()
    );
    -- A job's documents wait here, in order, until a worker has indexed them.
    CREATE TABLE job_documents (
        job_id   uuid NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
        seq      int NOT NULL,
        document jsonb NOT NULL,
        PRIMARY KEY (job_id, seq)
    );
    """,
    outbox.MIGRATION,
    # Full-text search: English stemming, title words weighing more than the rest.
    """
    ALTER TABLE documents ADD COLUMN words tsvector GENERATED ALWAYS AS (
        setweight(to_tsvector('english', title), 'A') || setweight(to_tsvector('english', body), 'B')
    ) STORED;
    CREATE INDEX documents_words ON documents USING gin (words);
    """,
    # Ownership: a user's own documents (content-svc indexes what it publishes for them); a
    # catalog document has none and is found by everyone.
    "ALTER TABLE documents ADD COLUMN owner uuid;",
]

# Reciprocal rank fusion: a document's fused score is the sum of 1 / (RRF_K + rank) over the
# rankings it appears in. 60 is the constant of the original paper (Cormack et al., 2009): no one
# ranking's top places dominate.
RRF_K = 60
CANDIDATES = 20     # each ranking's depth before fusing, unless the page reaches deeper


@dataclass(frozen=True)
class Document:
    id: str
    title: str
    body: str
    metadata: dict[str, str]
    owner: str = ""      # a user id: only they find it; "" for the catalog


@dataclass(frozen=True)
class Hit:
    document: Document
    score: float


class DocumentStore:
    def __init__(self, pool: asyncpg.Pool):
        self.pool = pool

    async def upsert(self, documents: list[Document], embeddings: np.ndarray) -> None:
        """All or nothing: one transaction for the batch."""
        async with self.pool.acquire() as connection, connection.transaction():
            await connection.executemany(
                "INSERT INTO documents (id, title, body, metadata, embedding, owner)"
                " VALUES ($1, $2, $3, $4::jsonb, $5::vector, $6)"
                " ON CONFLICT (id) DO UPDATE SET title = excluded.title, body = excluded.body,"
                " metadata = excluded.metadata, embedding = excluded.embedding,"
                " owner = excluded.owner, updated_at = now()",
                [(d.id, d.title, d.body, json.dumps(d.metadata), e, uuid.UUID(d.owner) if d.owner else None)
                 for d, e in zip(documents, embeddings, strict=True)])

    async def held_by_others(self, document_ids: list[str], owner: str) -> list[str]:
        """Of these ids, those naming a document that is not `owner`'s (a catalog one included)."""
        rows = await self.pool.fetch(
            "SELECT id FROM documents WHERE id = ANY($1::text[]) AND owner IS DISTINCT FROM $2",
            document_ids, uuid.UUID(owner))
        return [r["id"] for r in rows]

    async def delete(self, document_id: str, *, owned_only: bool = False) -> bool:
        """`owned_only`: leave a catalog document (no owner) alone."""
        return await self.pool.fetchval(
            "WITH gone AS (DELETE FROM documents WHERE id = $1 AND (NOT $2 OR owner IS NOT NULL)"
            " RETURNING 1) SELECT count(*) FROM gone", document_id, owned_only) > 0

    async def search(self, embedding: np.ndarray, query: str, *, mode: str, filters: dict[str, str],
                     limit: int, offset: int, reader: str) -> list[Hit]:
        """A page of documents ranked by meaning ("semantic"), words ("keyword") or both fused
        ("hybrid"); each with its cosine similarity to the query as the score. Only the catalog
        and `reader`'s own documents."""
        values: list = []

        def param(value) -> str:
            values.append(value)
            return f"${len(values)}"
        vector = param(embedding)   # in pgvector's binary form: the pool registers its codec
        # Each ranking CANDIDATES deep, or as deep as the page reaches. Not deeper: past about 30
        # rows (near pgvector's ef_search, 40) Postgres prefers an exact scan of every vector to the
        # HNSW index (measured on the demo catalog). A literal, so a cached generic plan knows it.
        depth = int(max(CANDIDATES, offset + limit))
        # No filter clause without filters: an always-true containment test can make the planner
        # walk the metadata index and sort every row, instead of walking the HNSW index.
        where = f"AND metadata @> {param(json.dumps(filters))}::jsonb" if filters else ""
        where += f" AND (owner IS NULL OR owner = {param(uuid.UUID(reader))})" if reader else " AND owner IS NULL"
        rankings = []
        if mode in ("semantic", "hybrid"):
            rankings.append(
                "SELECT id, row_number() OVER (ORDER BY distance) AS rank FROM ("
                f" SELECT id, embedding <=> {vector}::vector AS distance FROM documents WHERE true {where}"
                f" ORDER BY embedding <=> {vector}::vector LIMIT {depth}) nearest")
        if mode in ("keyword", "hybrid"):
            # A query's words, any of them: a question in plain words rarely has all in one title.
            words = f"replace(plainto_tsquery('english', {param(query)})::text, ' & ', ' | ')::tsquery"
            rankings.append(
                "SELECT id, row_number() OVER (ORDER BY relevance DESC, id) AS rank FROM ("
                f" SELECT id, ts_rank_cd(words, {words}) AS relevance FROM documents"
                f" WHERE words @@ {words} {where} ORDER BY relevance DESC LIMIT {depth}) matching")
        rows = await self.pool.fetch(
            f"WITH ranked AS ({' UNION ALL '.join(rankings)}),"
            f" fused AS (SELECT id, sum(1.0 / ({RRF_K} + rank)) AS fused FROM ranked GROUP BY id)"
            f" SELECT d.id, d.title, d.body, d.metadata, d.owner, 1 - (d.embedding <=> {vector}::vector) AS score"
            f" FROM fused JOIN documents d USING (id) ORDER BY fused DESC, d.id"
            f" LIMIT {param(limit)} OFFSET {param(offset)}", *values)
        return [Hit(Document(r["id"], r["title"], r["body"], json.loads(r["metadata"]),
                             str(r["owner"]) if r["owner"] else ""),
                    float(r["score"])) for r in rows]


@dataclass(frozen=True)
class Job:
    id: str
    user_id: str
    state: str          # queued | running | succeeded | failed
    total_count: int
    done_count: int
    error: str
    created_at: datetime
    updated_at: datetime


def _job(row) -> Job | None:
    return None if row is None else _existing_job(row)


def _existing_job(row) -> Job:
    """A row the statement just wrote or updated (RETURNING *): there always is one."""
    return Job(**{**dict(row), "id": str(row["id"]), "user_id": str(row["user_id"])})


# Writes the event that announces a job change, on the transaction's connection (an outbox).
Announce = Callable[[asyncpg.Connection, "Job"], Awaitable[None]]


class JobStore:
    def __init__(self, pool: asyncpg.Pool):
        self.pool = pool

    async def create(self, user_id: str, documents: list[Document], announce: Announce) -> Job:
        """The job, its documents and its announcement (`announce`), in one transaction."""
        job_id = uuid.uuid4()
        async with self.pool.acquire() as connection, connection.transaction():
            row = await connection.fetchrow(
                "INSERT INTO jobs (id, user_id, state, total_count) VALUES ($1, $2, 'queued', $3)"
                " RETURNING *", job_id, uuid.UUID(user_id), len(documents))
            await connection.executemany(
                "INSERT INTO job_documents (job_id, seq, document) VALUES ($1, $2, $3::jsonb)",
                [(job_id, seq, json.dumps(asdict(d))) for seq, d in enumerate(documents)])
            await announce(connection, _existing_job(row))
        return _existing_job(row)

    async def get(self, job_id: str) -> Job | None:
        try:
            wanted = uuid.UUID(job_id)
        except ValueError:
            return None
        return _job(await self.pool.fetchrow("SELECT * FROM jobs WHERE id = $1", wanted))

    async def next_documents(self, job: Job, limit: int) -> list[Document]:
        """The documents after those already indexed: a redelivered job resumes, not restarts."""
        rows = await self.pool.fetch(
            "SELECT document FROM job_documents WHERE job_id = $1 AND seq >= $2"
            " ORDER BY seq LIMIT $3", uuid.UUID(job.id), job.done_count, limit)
        return [Document(**json.loads(r["document"])) for r in rows]

    async def progress(self, job_id: str, done_count: int) -> Job:
        return _existing_job(await self.pool.fetchrow(
            "UPDATE jobs SET state = 'running', done_count = $2, updated_at = now()"
            " WHERE id = $1 RETURNING *", uuid.UUID(job_id), done_count))

    async def finish(self, job_id: str, announce: Announce, error: str = "") -> Job:
        """Succeeded (no error) or failed, announced in the same transaction; the waiting
        documents are no longer needed."""
        async with self.pool.acquire() as connection, connection.transaction():
            row = await connection.fetchrow(
                "UPDATE jobs SET state = $2, error = $3, updated_at = now() WHERE id = $1 RETURNING *",
                uuid.UUID(job_id), "failed" if error else "succeeded", error)
            await connection.execute("DELETE FROM job_documents WHERE job_id = $1", uuid.UUID(job_id))
            await announce(connection, _existing_job(row))
        return _existing_job(row)
