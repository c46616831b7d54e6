"""Start, watch and stop the mesh's processes; each has a pid file and a log in the state dir.

Processes run detached (their own session), so the mesh outlives `aimesh up`; `down` finds
them again by pid file."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

from .component import Component

DEFAULT_STOP_S = 15.0


class StartFailed(RuntimeError):
    def __init__(self, name: str, why: str, log_tail: str):
        super().__init__(f"{name} failed to start: {why}\n--- last lines of its log ---\n{log_tail}")
        self.component = name


class Supervisor:
    def __init__(self, state_dir: Path):
        self.run_dir = state_dir / "run"
        self.log_dir = state_dir / "logs"
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)

    def log_path(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    def _pid_path(self, name: str) -> Path:
        return self.run_dir / f"{name}.pid"

    def start(self, component: Component) -> int:
        with open(self.log_path(component.name), "ab") as log:
            log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting {component.name}\n".encode())
            log.flush()
            process = subprocess.Popen(
                component.argv, env={**os.environ, **component.env}, cwd=component.cwd,
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, user=component.user)
        self._pid_path(component.name).write_text(str(process.pid))
        # `down` and `stop` make no components: the kill deadline is kept beside the pid.
        self._stop_path(component.name).write_text(str(component.stop_timeout_s))
        return process.pid

    def _stop_path(self, name: str) -> Path:
        return self.run_dir / f"{name}.stop_s"

    def _recorded(self, name: str) -> int | None:
        """The pid the component started with (its process group's id), running or not."""
        try:
            return int(self._pid_path(name).read_text())
        except (OSError, ValueError):
            return None

    def pid(self, name: str) -> int | None:
        """The pid of a running component, or None."""
        pid = self._recorded(name)
        return pid if pid is not None and _alive(pid) else None

    def running(self) -> dict[str, int]:
        return {p.stem: pid for p in sorted(self.run_dir.glob("*.pid"))
                if (pid := self.pid(p.stem)) is not None}

    def started(self) -> list[str]:
        """Every component started and not stopped since: running, or ended on its own (a crash),
        perhaps leaving processes of its group behind."""
        return [p.stem for p in sorted(self.run_dir.glob("*.pid"))]

    def wait_healthy(self, components: list[Component]) -> None:
        """Poll each component's health check until all pass; fail on the first that exits or
        exceeds its start timeout."""
        started = time.monotonic()
        waiting = list(components)
        while waiting:
            for component in list(waiting):
                if self.pid(component.name) is None:
                    raise StartFailed(component.name, "the process exited", self.tail(component.name))
                if component.healthy():
                    component.after_start()
                    waiting.remove(component)
                elif time.monotonic() - started > component.start_timeout_s:
                    raise StartFailed(component.name,
                                      f"not healthy after {component.start_timeout_s:.0f} s",
                                      self.tail(component.name))
            if waiting:
                time.sleep(0.2)   # poll interval; the bound is each component's start timeout

    def stop(self, name: str, timeout_s: float | None = None) -> None:
        """SIGTERM the component's process group, wait (its Component.stop_timeout_s, or
        `timeout_s`), then SIGKILL what is left. Also when the component ended on its own: what
        it started may outlive it in its group (Triton's python stubs after Triton crashed)."""
        pid = self._recorded(name)
        if pid is not None and not (_alive(pid) or _group_alive(pid)):
            pid = None
        if timeout_s is None:
            try:
                timeout_s = float(self._stop_path(name).read_text())
            except (OSError, ValueError):
                timeout_s = DEFAULT_STOP_S
        if pid is not None:
            _signal_group(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout_s
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            _signal_group(pid, signal.SIGKILL)   # whatever is left of the group
            while _alive(pid) or _group_alive(pid):
                time.sleep(0.05)
        self._pid_path(name).unlink(missing_ok=True)
        self._stop_path(name).unlink(missing_ok=True)

    def kill(self, name: str) -> None:
        """SIGKILL the component's process group at once, as a crash would, and wait for it."""
        if (pid := self._recorded(name)) is not None and (_alive(pid) or _group_alive(pid)):
            _signal_group(pid, signal.SIGKILL)
            while _alive(pid) or _group_alive(pid):
                time.sleep(0.05)
        self._pid_path(name).unlink(missing_ok=True)
        self._stop_path(name).unlink(missing_ok=True)

    def of_trace(self, trace_id: str) -> list[tuple[str, str]]:
        """(component, line) for every log line naming the trace, from every log in the state dir
        (the services' JSON lines carry trace_id, Envoy's access log too), in time order."""
        found = []
        for path in sorted(self.log_dir.glob("*.log")):
            for line in path.read_text(errors="replace").splitlines():
                if trace_id in line:
                    found.append((path.stem, line))

        def when(entry: tuple[str, str]) -> str:
            try:
                return str(json.loads(entry[1]).get("time", ""))
            except ValueError:
                return ""
        return sorted(found, key=when)

    def tail(self, name: str, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path(name).read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def _alive(pid: int) -> bool:
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)   # reap our own exited children
        if waited == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:   # a zombie is not alive
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][0] != "Z"
    except OSError:
        return False


def _group_alive(group: int) -> bool:
    """Some process of this process group still runs (zombies do not count)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, _parent, process_group = stat.read_text().rsplit(") ", 1)[1].split()[:3]
        except (OSError, IndexError):
            continue
        if int(process_group) == group and state != "Z":
            return True
    return False


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass
