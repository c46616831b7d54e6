"""Demo data through the gateway, as a client would load it: the MovieLens catalog into search.

The demo accounts themselves are created by user-svc (AIMESH_DEMO); this indexes the
catalog once, as the demo admin, with one bulk index job, so search has something to find
on first `up`."""
from __future__ import annotations

import time

import grpc

from aimesh.search.v1 import search_pb2, search_pb2_grpc
from aimesh.user.v1 import user_pb2, user_pb2_grpc
from services.kit.movielens import Movie, movies
from services.user.demo import PASSWORD

POLL_S = 1.0   # how often `up` looks at the indexing job


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


def seed_catalog(gateway: str, progress=print, timeout_s: float = 600) -> int:
    """Index the catalog with one bulk job unless search already has it; returns how many
    documents were indexed (0 when it was there)."""
    auth = (("authorization", f"Bearer {login(gateway, 'admin@demo.aimesh')}"),)
    with grpc.insecure_channel(gateway) as channel:
        search = search_pb2_grpc.SearchServiceStub(channel)
        found = search.Search(search_pb2.SearchRequest(query="Toy Story", page_size=1),
                              metadata=auth, timeout=10)
        if found.results:
            return 0
        documents = [document(m) for m in movies()]
        job = search.SubmitIndexJob(search_pb2.SubmitIndexJobRequest(documents=documents),
                                    metadata=auth, timeout=30).job
        deadline, shown = time.monotonic() + timeout_s, -1
        while job.state not in (search_pb2.JOB_STATE_SUCCEEDED, search_pb2.JOB_STATE_FAILED):
            if time.monotonic() > deadline:
                raise TimeoutError(f"indexing job {job.job_id} not done after {timeout_s:.0f} s")
            time.sleep(POLL_S)
            job = search.GetJob(search_pb2.GetJobRequest(job_id=job.job_id), metadata=auth,
                                timeout=10).job
            if job.done_count != shown:
                progress(f"  indexed {job.done_count}/{job.total_count}")
                shown = job.done_count
        if job.state == search_pb2.JOB_STATE_FAILED:
            raise RuntimeError(f"indexing job {job.job_id} failed: {job.error}")
    return job.done_count
