"""Run last: NATS dies hard (SIGKILL) while purchases flow from user-svc's outbox to notify-svc.
Once it is back, every acknowledged purchase has exactly one notification: none lost (the
outbox keeps what JetStream had not acknowledged, JetStream keeps what it had), none doubled
(JetStream drops an event re-published with the same id, notify-svc keeps one per event id)."""
import collections
import re

from tests.integration.client import new_user, purchases, stored, wait_for


def test_no_event_is_lost_or_doubled_when_nats_is_killed_mid_flow(mesh, users, figures):
    email, token = new_user(users, "natscrash")
    with purchases(mesh, token) as purchased:
        acknowledged = purchased.acknowledged
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

    def notified() -> collections.Counter:
        rows = stored(mesh, 'SELECT array_agg(n.body) AS bodies FROM notify.notifications n '
                            'JOIN "user".users u ON u.id = n.user_id WHERE u.email = $1', email)
        return collections.Counter(int(m[1]) for body in rows["bodies"] or []
                                   if (m := re.match(r"Item (\d+) is in your history", body)))
    counts = wait_for(lambda: (c := notified()) and set(c) >= set(acknowledged) and c,
                      timeout_s=90, interval_s=1, what="a notification for every acknowledged purchase")
    assert set(acknowledged) <= set(counts), sorted(set(acknowledged) - set(counts))
    assert max(counts.values()) == 1, {item: n for item, n in counts.items() if n > 1}
    figures.append(f"NATS SIGKILLed mid-flow: {len(acknowledged)} purchases acknowledged "
                   f"({after - during} while it was down), {len(set(acknowledged) & set(counts))} "
                   f"notified, {len(set(acknowledged) - set(counts))} lost, "
                   f"{sum(n > 1 for n in counts.values())} doubled")
