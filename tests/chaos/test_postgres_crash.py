"""Run last: Postgres dies hard (SIGKILL) while purchases are being recorded. Every purchase the
mesh acknowledged is stored once it is back, calls fail cleanly while it is down (no hang, no
INTERNAL), and writes succeed again after the restart without restarting any service."""
import threading
import time

import grpc

from aimesh.user.v1 import user_pb2, user_pb2_grpc
from tests.integration.client import bearer, new_user, stored, wait_for

PACE_S = 0.25      # 4 writes a second: under the free tier's 200 a minute


def test_every_acknowledged_purchase_survives_a_postgres_crash(mesh, users):
    email, token = new_user(users, "crash")
    acknowledged: list[int] = []
    failures: list[grpc.StatusCode] = []
    stop = threading.Event()

    def record() -> None:
        with mesh.channel() as channel:
            stub = user_pb2_grpc.UserServiceStub(channel)
            item = 0
            while not stop.is_set():
                item += 1
                try:
                    stub.RecordPurchase(user_pb2.RecordPurchaseRequest(item_id=item),
                                        metadata=bearer(token), timeout=5)
                    acknowledged.append(item)
                except grpc.RpcError as failed:
                    failures.append(failed.code())
                time.sleep(PACE_S)

    writer = threading.Thread(target=record)
    writer.start()
    try:
        wait_for(lambda: len(acknowledged) >= 10, timeout_s=30, what="purchases before the crash")
        killed = mesh.cli("stop", "postgres", "--kill")
        assert killed.returncode == 0, killed.stderr
        wait_for(lambda: len(failures) >= 3, timeout_s=30, what="calls failing while it is down")
        started = mesh.cli("start", "postgres", timeout=120)
        assert started.returncode == 0, started.stderr
        after = len(acknowledged)
        wait_for(lambda: len(acknowledged) >= after + 10, timeout_s=60,
                 what="purchases recorded again after the restart")
    finally:
        stop.set()
        writer.join(timeout=30)
    assert set(failures) <= {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}, failures
    row = stored(mesh, 'SELECT array_agg(p.item_id) AS items FROM "user".purchases p '
                       'JOIN "user".users u ON u.id = p.user_id WHERE u.email = $1', email)
    kept = set(row["items"] or [])
    assert set(acknowledged) <= kept, sorted(set(acknowledged) - kept)
