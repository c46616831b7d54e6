"""CPU time per request, per mesh component: what each process (with its children: Postgres's
backends, Triton's python stubs) spent while a benchmark row ran, divided by the row's requests.
On a machine whose cores every process shares, this is the cost that decides throughput."""
from __future__ import annotations

import psutil

from aimesh.harness import MeshUnderTest

CLIENT = "client"   # the benchmark's own process: the load generator


def _cpu_s(process: psutil.Process) -> float:
    try:
        times = process.cpu_times()
    except psutil.Error:    # ended between listing and reading
        return 0.0
    return times.user + times.system


class CpuMeter:
    def __init__(self, mesh: MeshUnderTest):
        self.mesh = mesh
        self.me = psutil.Process()
        self._start: dict[int, tuple[str, float]] = {}

    def _snapshot(self) -> dict[int, tuple[str, float]]:
        seen = {self.me.pid: (CLIENT, _cpu_s(self.me))}
        for name, processes in self.mesh.processes().items():
            for process in processes:
                seen[process.pid] = (name, _cpu_s(process))
        return seen

    def start(self) -> None:
        self._start = self._snapshot()

    def per_request_ms(self, requests: int) -> dict[str, float]:
        """Component -> CPU ms per request since `start` (a process born since counts whole)."""
        spent: dict[str, float] = {}
        for pid, (name, now) in self._snapshot().items():
            before = self._start.get(pid, (name, 0.0))[1]
            spent[name] = spent.get(name, 0.0) + (now - before) * 1000 / requests
        return spent


def grouped(spent: dict[str, float], groups: dict[str, str]) -> dict[str, float]:
    """Instances summed under their service (`groups`: instance -> service)."""
    out: dict[str, float] = {}
    for name, ms in spent.items():
        key = groups.get(name, name)
        out[key] = out.get(key, 0.0) + ms
    return out
