"""Documents and their embeddings in search-svc's schema (pgvector, HNSW, cosine)."""
from __future__ import annotations

import json
from dataclasses import dataclass

import asyncpg
import numpy as np

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
]


@dataclass(frozen=True)
class Document:
    id: str
    title: str
    body: str
    metadata: dict[str, str]


@dataclass(frozen=True)
class Hit:
    document: Document
    score: float


def _vector(embedding: np.ndarray) -> str:
    return "[" + ",".join(f"{x:.7g}" for x in embedding) + "]"


class DocumentStore:
    def __init__(self, pool: asyncpg.Pool):
        self.pool = pool

    async def upsert(self, documents: list[Document], embeddings: np.ndarray) -> None:
        """All or nothing: one transaction for the batch."""
        async with self.pool.acquire() as connection, connection.transaction():
            await connection.executemany(
                "INSERT INTO documents (id, title, body, metadata, embedding)"
                " VALUES ($1, $2, $3, $4::jsonb, $5::vector)"
                " ON CONFLICT (id) DO UPDATE SET title = excluded.title, body = excluded.body,"
                " metadata = excluded.metadata, embedding = excluded.embedding, updated_at = now()",
                [(d.id, d.title, d.body, json.dumps(d.metadata), _vector(e))
                 for d, e in zip(documents, embeddings)])

    async def delete(self, document_id: str) -> bool:
        return await self.pool.fetchval(
            "WITH gone AS (DELETE FROM documents WHERE id = $1 RETURNING 1) SELECT count(*) FROM gone",
            document_id) > 0

    async def nearest(self, embedding: np.ndarray, *, filters: dict[str, str], limit: int,
                      offset: int) -> list[Hit]:
        rows = await self.pool.fetch(
            "SELECT id, title, body, metadata, 1 - (embedding <=> $1::vector) AS score"
            " FROM documents WHERE metadata @> $2::jsonb"
            " ORDER BY embedding <=> $1::vector LIMIT $3 OFFSET $4",
            _vector(embedding), json.dumps(filters), limit, offset)
        return [Hit(Document(r["id"], r["title"], r["body"], json.loads(r["metadata"])),
                    float(r["score"])) for r in rows]
