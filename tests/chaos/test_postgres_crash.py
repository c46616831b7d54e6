"""Run last: Postgres dies hard (SIGKILL) while accounts are registered, purchases recorded and
documents indexed. Every write the mesh acknowledged is stored once it is back, no batch is stored
in part, calls fail cleanly while it is down (no hang, no INTERNAL), and writes succeed again
after the restart without restarting any service."""
import contextlib
import uuid

import grpc

from aimesh.search.v1 import search_pb2, search_pb2_grpc
from aimesh.user.v1 import user_pb2, user_pb2_grpc
from tests.integration.client import PASSWORD, Writes, bearer, new_user, purchases, stored, wait_for

CLEAN = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}
RUN = uuid.uuid4().hex[:8]


def registrations(mesh) -> Writes:
    def register(channel: grpc.Channel, n: int) -> str:
        email = f"crash-{RUN}-{n}@example.com"
        user_pb2_grpc.UserServiceStub(channel).Register(
            user_pb2.RegisterRequest(email=email, password=PASSWORD, display_name="Crash"), timeout=5)
        return email
    return Writes(mesh, register, pace_s=0.5)     # argon2 hashes each password: CPU


def indexing(mesh, admin: str) -> Writes:
    """Batches of two documents, owned by nobody who searches."""
    def index(channel: grpc.Channel, n: int) -> int:
        search_pb2_grpc.SearchServiceStub(channel).IndexDocuments(search_pb2.IndexDocumentsRequest(documents=[
            search_pb2.Document(document_id=f"crash-{RUN}-{n}-{half}", title=f"Crash {n}", text="Written in a crash.",
                                owner_id=str(uuid.UUID(int=0))) for half in "ab"]),
            metadata=bearer(admin), timeout=10)
        return n
    return Writes(mesh, index, pace_s=0.5)


def test_every_acknowledged_write_survives_a_postgres_crash(mesh, users, admin, figures):
    email, token = new_user(users, "crash")
    writers = {"purchases": purchases(mesh, token), "registrations": registrations(mesh),
               "documents": indexing(mesh, admin)}
    with contextlib.ExitStack() as running:
        for writer in writers.values():
            running.enter_context(writer)
        wait_for(lambda: all(len(w.acknowledged) >= 5 for w in writers.values()), timeout_s=30,
                 what="writes before the crash")
        killed = mesh.cli("stop", "postgres", "--kill")
        assert killed.returncode == 0, killed.stderr
        wait_for(lambda: all(len(w.failures) >= 2 for w in writers.values()), timeout_s=30,
                 what="calls failing while it is down")
        started = mesh.cli("start", "postgres", timeout=120)
        assert started.returncode == 0, started.stderr
        after = {name: len(w.acknowledged) for name, w in writers.items()}
        wait_for(lambda: all(len(w.acknowledged) >= after[name] + 5 for name, w in writers.items()),
                 timeout_s=60, what="writes acknowledged again after the restart")
    for name, writer in writers.items():
        assert set(writer.failures) <= CLEAN, (name, writer.failures)

    bought = stored(mesh, 'SELECT array_agg(p.item_id) AS items FROM "user".purchases p '
                          'JOIN "user".users u ON u.id = p.user_id WHERE u.email = $1', email)["items"]
    assert set(writers["purchases"].acknowledged) <= set(bought or []), \
        sorted(set(writers["purchases"].acknowledged) - set(bought or []))
    registered = stored(mesh, 'SELECT array_agg(email) AS emails FROM "user".users WHERE email LIKE $1',
                        f"crash-{RUN}-%")["emails"]
    assert set(writers["registrations"].acknowledged) <= set(registered or []), \
        sorted(set(writers["registrations"].acknowledged) - set(registered or []))
    indexed = stored(mesh, "SELECT array_agg(id) AS ids FROM search.documents WHERE id LIKE $1",
                     f"crash-{RUN}-%")["ids"] or []
    halves = {n: sum(document.startswith(f"crash-{RUN}-{n}-") for document in indexed)
              for n in writers["documents"].tried}
    assert all(halves[n] == 2 for n in writers["documents"].acknowledged), halves
    assert set(halves.values()) <= {0, 2}, {n: count for n, count in halves.items() if count == 1}
    present = {"purchases": set(writers["purchases"].acknowledged) & set(bought or []),
               "registrations": set(writers["registrations"].acknowledged) & set(registered or []),
               "documents": {n for n in writers["documents"].acknowledged if halves[n] == 2}}
    figures.append("Postgres SIGKILLed mid-write, acknowledged / present: " + ", ".join(
        f"{name} {len(writers[name].acknowledged)} / {len(present[name])}" for name in writers)
        + f"; batches stored in part: {sum(count == 1 for count in halves.values())}"
        + f"; calls refused while down: {sum(len(w.failures) for w in writers.values())}")
