"""A short-lived cache of recommendations, keyed by everything that decides them (the user's
history included), so a new purchase is simply a new key."""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

TTL_S = 30.0
MAX_USERS = 10_000


class RecentAnswers:
    def __init__(self, ttl_s: float = TTL_S, clock: Callable[[], float] = time.monotonic):
        self.ttl_s, self.clock = ttl_s, clock
        self.entries: dict[tuple, tuple[float, Any]] = {}

    def get(self, key: tuple) -> Any | None:
        found = self.entries.get(key)
        if found is None or found[0] < self.clock():
            self.entries.pop(key, None)
            return None
        return found[1]

    def put(self, key: tuple, value: Any) -> None:
        if len(self.entries) >= MAX_USERS:   # bounded: drop the oldest entry
            self.entries.pop(next(iter(self.entries)))
        self.entries[key] = (self.clock() + self.ttl_s, value)
