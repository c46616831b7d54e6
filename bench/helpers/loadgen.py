"""Closed-loop load for the benchmarks: a fixed number of requests, at most N in flight."""
from __future__ import annotations

import threading
import time
from collections.abc import Callable

import numpy as np

Done = Callable[[Exception | None], None]


def run(requests: int, concurrency: int, start: Callable[[int, Done], None]) -> tuple[np.ndarray, float]:
    """start(i, done) begins request i and calls done(error) when it ends.
    Returns (seconds each request took, requests per second); raises if any failed."""
    in_flight = threading.BoundedSemaphore(concurrency)
    taken, errors, lock = [], [], threading.Lock()

    def finisher(started: float) -> Done:
        def done(error: Exception | None) -> None:
            with lock:
                taken.append(time.perf_counter() - started)
                if error is not None:
                    errors.append(error)
            in_flight.release()
        return done

    began = time.perf_counter()
    for i in range(requests):
        in_flight.acquire()
        start(i, finisher(time.perf_counter()))
    for _ in range(concurrency):     # wait for the last ones
        in_flight.acquire()
    elapsed = time.perf_counter() - began
    if errors:
        raise RuntimeError(f"{len(errors)} of {requests} requests failed, e.g. {errors[0]}")
    return np.array(taken), requests / elapsed
