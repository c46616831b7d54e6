"""A circuit breaker around a dependency that can fail slowly (Triton): after `failures`
consecutive failures it opens and calls fail fast; after `reset_after_s` one probe is let
through (half-open); its success closes the breaker, its failure opens it again."""
from __future__ import annotations

import enum
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import prometheus_client

from .errors import Unavailable

T = TypeVar("T")

STATE = prometheus_client.Gauge(
    "aimesh_breaker_state", "Circuit breaker state: 0 closed, 1 open, 2 half-open.", ["breaker"])


class State(enum.IntEnum):
    CLOSED = 0
    OPEN = 1
    HALF_OPEN = 2


class Breaker:
    def __init__(self, name: str, *, failures: int = 5, reset_after_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic):
        self.name, self.failures, self.reset_after_s, self.clock = name, failures, reset_after_s, clock
        self.consecutive_failures = 0
        self.opened_at = 0.0
        self._set(State.CLOSED)

    def _set(self, state: State) -> None:
        self.state = state
        STATE.labels(self.name).set(state)

    async def call(self, work: Callable[[], Awaitable[T]]) -> T:
        """Run `work` unless the breaker is open; kit.Unavailable from it counts as a failure."""
        if self.state is State.OPEN:
            if self.clock() - self.opened_at < self.reset_after_s:
                raise Unavailable(f"{self.name}: circuit open")
            self._set(State.HALF_OPEN)
        elif self.state is State.HALF_OPEN:
            raise Unavailable(f"{self.name}: circuit half-open, a probe is in flight")
        try:
            result = await work()
        except Unavailable:
            self._failed()
            raise
        self.consecutive_failures = 0
        self._set(State.CLOSED)
        return result

    def _failed(self) -> None:
        self.consecutive_failures += 1
        if self.state is State.HALF_OPEN or self.consecutive_failures >= self.failures:
            self.opened_at = self.clock()
            self._set(State.OPEN)
