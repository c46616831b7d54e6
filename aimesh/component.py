"""A component the runner supervises: a process, how to start it, how to know it is healthy."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable


@dataclass
class Component:
    name: str                                   # e.g. "triton", "search-2"
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)   # added to the runner's environment
    cwd: Path | None = None
    healthy: Callable[[], bool] = lambda: True  # polled (with a bound) after start
    start_timeout_s: float = 60.0
    stop_timeout_s: float = 15.0                # SIGTERM, then SIGKILL after this
