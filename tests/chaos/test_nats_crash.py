"""Run last: NATS dies hard (SIGKILL) while purchases flow from user-svc's outbox to notify-svc.
Once it is back, every acknowledged purchase has exactly one notification: none lost (the
outbox keeps what JetStream had not acknowledged, JetStream keeps what it had), none doubled
(JetStream drops an event re-published with the same id, notify-svc keeps one per event id)."""
import collections
import re
import threading
import time

import grpc

from aimesh.user.v1 import user_pb2, user_pb2_grpc
from tests.integration.client import bearer, new_user, stored, wait_for

PACE_S = 0.25      # 4 purchases a second: under the free tier's 200 a minute


def test_no_event_is_lost_or_doubled_when_nats_is_killed_mid_flow(mesh, users):
    email, token = new_user(users, "natscrash")
    acknowledged: list[int] = []
    stop = threading.Event()

    def record() -> None:
        with mesh.channel() as channel:
            stub = user_pb2_grpc.UserServiceStub(channel)
            for item in range(1, 10_000):
                if stop.is_set():
                    return
                try:
                    stub.RecordPurchase(user_pb2.RecordPurchaseRequest(item_id=item),
                                        metadata=bearer(token), timeout=5)
                    acknowledged.append(item)
                except grpc.RpcError:      # not acknowledged: not counted
                    pass
                time.sleep(PACE_S)

    writer = threading.Thread(target=record)
    writer.start()
    try:
        wait_for(lambda: len(acknowledged) >= 8, timeout_s=30, what="purchases before the kill")
        killed = mesh.cli("stop", "nats", "--kill")
        assert killed.returncode == 0, killed.stderr
        during = len(acknowledged)
        wait_for(lambda: len(acknowledged) >= during + 8, timeout_s=30,
                 what="purchases acknowledged while NATS is down (the outbox keeps them)")
        started = mesh.cli("start", "nats", timeout=120)
        assert started.returncode == 0, started.stderr
        after = len(acknowledged)
        wait_for(lambda: len(acknowledged) >= after + 8, timeout_s=30, what="purchases after")
    finally:
        stop.set()
        writer.join(timeout=30)

    def notified() -> collections.Counter:
        rows = stored(mesh, 'SELECT array_agg(n.body) AS bodies FROM notify.notifications n '
                            'JOIN "user".users u ON u.id = n.user_id WHERE u.email = $1', email)
        return collections.Counter(int(m[1]) for body in rows["bodies"] or []
                                   if (m := re.match(r"Item (\d+) is in your history", body)))
    counts = wait_for(lambda: (c := notified()) and set(c) >= set(acknowledged) and c,
                      timeout_s=90, interval_s=1, what="a notification for every acknowledged purchase")
    assert set(acknowledged) <= set(counts), sorted(set(acknowledged) - set(counts))
    assert max(counts.values()) == 1, {item: n for item, n in counts.items() if n > 1}
