"""Run last: Postgres dies hard (SIGKILL) while purchases are being recorded. Every purchase the
mesh acknowledged is stored once it is back, calls fail cleanly while it is down (no hang, no
INTERNAL), and writes succeed again after the restart without restarting any service."""
import grpc

from tests.integration.client import Purchases, new_user, stored, wait_for


def test_every_acknowledged_purchase_survives_a_postgres_crash(mesh, users):
    email, token = new_user(users, "crash")
    with Purchases(mesh, token) as purchases:
        wait_for(lambda: len(purchases.acknowledged) >= 10, timeout_s=30,
                 what="purchases before the crash")
        killed = mesh.cli("stop", "postgres", "--kill")
        assert killed.returncode == 0, killed.stderr
        wait_for(lambda: len(purchases.failures) >= 3, timeout_s=30,
                 what="calls failing while it is down")
        started = mesh.cli("start", "postgres", timeout=120)
        assert started.returncode == 0, started.stderr
        after = len(purchases.acknowledged)
        wait_for(lambda: len(purchases.acknowledged) >= after + 10, timeout_s=60,
                 what="purchases recorded again after the restart")
    assert set(purchases.failures) <= {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}, \
        purchases.failures
    row = stored(mesh, 'SELECT array_agg(p.item_id) AS items FROM "user".purchases p '
                       'JOIN "user".users u ON u.id = p.user_id WHERE u.email = $1', email)
    kept = set(row["items"] or [])
    assert set(purchases.acknowledged) <= kept, sorted(set(purchases.acknowledged) - kept)
