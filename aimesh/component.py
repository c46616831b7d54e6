"""A component the runner supervises: a process, how to start it, how to know it is healthy."""
from __future__ import annotations

import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Component:
    name: str                                   # e.g. "triton", "search-2"
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)   # added to the runner's environment
    cwd: Path | None = None
    user: str | None = None                     # run as this system user (postgres refuses root)
    healthy: Callable[[], bool] = lambda: True  # polled (with a bound) after start
    after_start: Callable[[], None] = lambda: None      # once healthy (e.g. create the database)
    start_timeout_s: float = 60.0
    stop_timeout_s: float = 15.0                # SIGTERM, then SIGKILL after this


def http_ok(url: str) -> bool:
    """A health check: the URL answers 200 within a second."""
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return response.status == 200
    except OSError:
        return False
