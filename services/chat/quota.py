"""Answers in progress, per user: generating costs the shared model's slots, so one user may hold
only a few at once, and the rest of the model stays free for everyone else."""
from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator

from services import kit


class AnswersInProgress:
    def __init__(self, per_user: int):
        self.per_user = per_user          # 0: no cap
        self.running: Counter[str] = Counter()

    @contextlib.contextmanager
    def hold(self, user_id: str) -> Iterator[None]:
        """One answer for this user, for as long as the block runs; RESOURCE_EXHAUSTED past the cap."""
        if self.per_user and self.running[user_id] >= self.per_user:
            raise kit.ResourceExhausted(f"you already have {self.per_user} answers in progress")
        self.running[user_id] += 1
        try:
            yield
        finally:
            self.running[user_id] -= 1
            if not self.running[user_id]:
                del self.running[user_id]
