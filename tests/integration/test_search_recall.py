"""search-svc's HNSW index finds nearly what an exact search finds: the Search RPC through the
gateway against exact cosine over every vector stored in search-svc's table, on the demo catalog."""
from __future__ import annotations

import asyncio

import asyncpg
import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from aimesh.search.v1 import search_pb2, search_pb2_grpc
from tests.integration.client import bearer, wait_for
from tests.integration.test_triton_models import embed

K = 10
MIN_RECALL = 0.95
INDEX = "documents_embedding"   # the HNSW index in services/search/store.py

# Fixed queries: titles, genres, moods and plots, so the neighbourhoods differ.
QUERIES = [
    "Star Wars", "Toy Story", "The Godfather", "Pulp Fiction", "Casablanca", "Fargo",
    "Jurassic Park", "Titanic", "Batman", "Die Hard", "Alien", "The Lion King", "Babe",
    "Braveheart", "Forrest Gump", "Schindler's List", "Raiders of the Lost Ark", "Scream",
    "Men in Black", "Independence Day", "animated film for children", "musical with songs",
    "film noir detective story", "science fiction space adventure", "romantic comedy",
    "horror movie with a killer", "war film about soldiers", "western with cowboys",
    "documentary", "crime thriller", "fantasy adventure", "mystery", "drama from the 1950s",
    "comedy from 1995", "action movie 1996", "silent film", "Christmas", "a dog",
    "love story in Paris", "ghosts and haunted houses", "robots", "aliens invade Earth",
    "gangsters in New York", "a road trip", "vampires", "sports team", "high school",
    "wedding", "Shakespeare", "pirates", "Disney", "James Bond",
]


@pytest.fixture(scope="module")
def search(mesh):
    with mesh.channel() as channel:
        yield search_pb2_grpc.SearchServiceStub(channel)


async def _fetch(mesh, sql: str, *args):
    connection = await asyncpg.connect(mesh.postgres_dsn())
    try:
        return await connection.fetch(sql, *args)
    finally:
        await connection.close()


def query(mesh, sql: str, *args):
    return asyncio.run(_fetch(mesh, sql, *args))


def stored_vectors(mesh) -> tuple[list[str], np.ndarray]:
    """Every document's id and stored embedding, as unit rows (exact cosine is then a dot)."""
    rows = query(mesh, "SELECT id, embedding::text AS embedding FROM search.documents")
    vectors = np.array([np.array(r["embedding"].strip("[]").split(","), dtype=np.float64)
                        for r in rows])
    return [r["id"] for r in rows], vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def index_scans(mesh) -> int:
    [row] = query(mesh, "SELECT idx_scan FROM pg_stat_user_indexes"
                        " WHERE schemaname = 'search' AND indexrelname = $1", INDEX)
    return row["idx_scan"]


def test_hnsw_search_recalls_the_exact_top_10(mesh, search, bob):
    ids, vectors = stored_vectors(mesh)
    assert len(ids) >= 1682, "the demo catalog is indexed at up"
    with grpcclient.InferenceServerClient(f"127.0.0.1:{mesh.topo.infra.triton_grpc_port}") as triton:
        queries = embed(triton, QUERIES).astype(np.float64)
    exact = [{ids[i] for i in np.argsort(-(vectors @ q), kind="stable")[:K]} for q in queries]

    scans_before = index_scans(mesh)
    found = [{r.document.document_id for r in search.Search(
                 search_pb2.SearchRequest(query=text, page_size=K, mode=search_pb2.SEARCH_MODE_SEMANTIC),
                 metadata=bearer(bob),
                 timeout=10).results}
             for text in QUERIES]
    assert all(len(f) == K for f in found)

    recalls = [len(f & e) / K for f, e in zip(found, exact, strict=True)]
    worst = sorted(zip(recalls, QUERIES, strict=True))[:5]
    assert np.mean(recalls) >= MIN_RECALL, f"recall@{K} {np.mean(recalls):.3f}; worst {worst}"
    # The answers came from the HNSW index, not an exact scan the planner preferred (which
    # would pass this test with the index deleted). Postgres publishes its counters lazily.
    wait_for(lambda: index_scans(mesh) >= scans_before + len(QUERIES), timeout_s=30,
             interval_s=0.5, what=f"{len(QUERIES)} scans of {INDEX} in pg_stat_user_indexes")
