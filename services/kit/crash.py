"""Crash points: where a chaos test makes a process die on purpose, to prove that what it was
doing resumes. Off unless the configured file names the point; each naming fires once."""
from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path

log = logging.getLogger("aimesh.crash")
EXIT_STATUS = 70


class CrashPoints:
    def __init__(self, path: str, service: str):
        self.path = Path(path) if path else None
        self.service = service

    def reached(self, point: str) -> None:
        """Die at once (no cleanup, as a kill would) if the file names `<service>:<point>`; the
        line is removed first, so one instance dies once."""
        if self.path is None or not self.path.exists():
            return
        wanted = f"{self.service}:{point}"
        with self.path.open("r+") as points:
            fcntl.flock(points, fcntl.LOCK_EX)   # of two instances at the point, one dies
            lines = points.read().splitlines()
            if wanted not in lines:
                return
            lines.remove(wanted)
            points.seek(0)
            points.truncate()
            points.write("".join(f"{line}\n" for line in lines))
            points.flush()
            log.warning("crash point reached: exiting", extra={"fields": {"point": point}})
            os._exit(EXIT_STATUS)
