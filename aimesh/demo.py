"""Demo data through the gateway, as a client would load it: the MovieLens catalog into search.

The demo accounts themselves are created by user-svc (AIMESH_DEMO); this indexes the
catalog once, as the demo admin, so search has something to find on first `up`."""
from __future__ import annotations

import grpc

from aimesh.search.v1 import search_pb2, search_pb2_grpc
from aimesh.user.v1 import user_pb2, user_pb2_grpc
from services.kit.movielens import Movie, movies
from services.user.demo import ACCOUNTS, PASSWORD

BATCH = 128


def login(gateway: str, email: str, password: str = PASSWORD) -> str:
    with grpc.insecure_channel(gateway) as channel:
        reply = user_pb2_grpc.UserServiceStub(channel).Login(
            user_pb2.LoginRequest(email=email, password=password), timeout=5)
    return reply.access_token


def document(movie: Movie) -> search_pb2.Document:
    text = f"{movie.title} ({movie.year}). Genres: {', '.join(movie.genres)}."
    return search_pb2.Document(
        document_id=f"movie-{movie.item_id}", title=movie.title, text=text,
        metadata={"item_id": str(movie.item_id), "year": movie.year,
                  **{f"genre:{g}": "1" for g in movie.genres}})


def seed_catalog(gateway: str) -> int:
    """Index the catalog unless search already has it; returns how many were indexed."""
    auth = [("authorization", f"Bearer {login(gateway, 'admin@demo.aimesh')}")]
    with grpc.insecure_channel(gateway) as channel:
        search = search_pb2_grpc.SearchServiceStub(channel)
        found = search.Search(search_pb2.SearchRequest(query="Toy Story", page_size=1),
                              metadata=auth, timeout=10)
        if found.results:
            return 0
        catalog = movies()
        for start in range(0, len(catalog), BATCH):
            batch = [document(m) for m in catalog[start:start + BATCH]]
            search.IndexDocuments(search_pb2.IndexDocumentsRequest(documents=batch),
                                  metadata=auth, timeout=30)
    return len(catalog)
