"""user-svc's password checks queue for a pool sized to the cores a check's own threads leave:
a burst of logins is checked a few at a time, not all at once (bench/login_burst.py measures why)."""
import asyncio
import os
import threading
from datetime import UTC, datetime

from services.user import accounts
from services.user.store import User

AT_ONCE = max(1, len(os.sched_getaffinity(0)) // accounts.passwords.parallelism)
HOW_MANY = 2 * AT_ONCE + 2    # more than the pool holds, on any machine


class CountingHasher:
    """The real hasher, counting the checks that run at once."""

    def __init__(self, real):
        self.real, self.running, self.most = real, 0, 0
        self.parallelism = real.parallelism
        self.lock = threading.Lock()

    def verify(self, password_hash: str, password: str) -> bool:
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
        try:
            return self.real.verify(password_hash, password)
        finally:
            with self.lock:
                self.running -= 1


async def test_a_burst_of_checks_runs_a_few_at_a_time_and_each_answers(monkeypatch):
    counting = CountingHasher(accounts.passwords)
    monkeypatch.setattr(accounts, "passwords", counting)
    user = User(id="u", email="a@b.c", password_hash=counting.real.hash("right password"),
                display_name="a", tier="free", role="user", created_at=datetime.now(UTC))
    answers = await asyncio.gather(*(accounts.password_matches(user, "right password" if i % 2 else "wrong")
                                     for i in range(HOW_MANY)))
    assert answers == [bool(i % 2) for i in range(HOW_MANY)]
    assert counting.most == AT_ONCE
