"""The circuit breaker's state machine, on a fake clock."""
import pytest

from services import kit
from services.kit.breaker import Breaker, State


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


async def failing():
    raise kit.Unavailable("down")


async def working():
    return "ok"


async def test_opens_after_consecutive_failures_then_fails_fast():
    clock = Clock()
    breaker = Breaker("t1", failures=3, reset_after_s=10, clock=clock)
    for _ in range(3):
        with pytest.raises(kit.Unavailable, match="down"):
            await breaker.call(failing)
    assert breaker.state is State.OPEN
    calls = []

    async def counted():
        calls.append(1)
        return "ok"
    with pytest.raises(kit.Unavailable, match="circuit open"):
        await breaker.call(counted)
    assert calls == []   # failing fast: the dependency was not called


async def test_a_success_resets_the_count():
    breaker = Breaker("t2", failures=2, clock=Clock())
    with pytest.raises(kit.Unavailable):
        await breaker.call(failing)
    assert await breaker.call(working) == "ok"
    with pytest.raises(kit.Unavailable):
        await breaker.call(failing)
    assert breaker.state is State.CLOSED


async def test_half_open_probe_closes_on_success_and_reopens_on_failure():
    clock = Clock()
    breaker = Breaker("t3", failures=1, reset_after_s=5, clock=clock)
    with pytest.raises(kit.Unavailable):
        await breaker.call(failing)
    clock.now = 5.1
    with pytest.raises(kit.Unavailable, match="down"):   # the probe is let through, and fails
        await breaker.call(failing)
    assert breaker.state is State.OPEN
    clock.now = 10.3
    assert await breaker.call(working) == "ok"
    assert breaker.state is State.CLOSED
