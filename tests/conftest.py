"""One mesh per test session, brought up from an empty state directory the way a user does
(`aimesh up`), on ports shifted (tests/ports.py) so a developer's own mesh can keep running.
Chaos tests run last."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from aimesh import demo, infra, topology
from aimesh.paths import ROOT
from aimesh.user.v1 import user_pb2_grpc
from services.kit.events import Events
from services.kit.tls import GATEWAY, Identity, dns_name
from tests import ports

TOPOLOGY = Path(__file__).with_name("topology.yaml")


@dataclass
class MeshHandle:
    topo: topology.Topology
    state_dir: Path
    env: dict[str, str]

    @property
    def gateway(self) -> str:
        return f"127.0.0.1:{self.topo.gateway.edge_port}"

    @property
    def mesh_listener(self) -> str:
        return f"127.0.0.1:{self.topo.gateway.mesh_port}"

    def cli(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "aimesh", *args], env=self.env, cwd=ROOT,
                              capture_output=True, text=True, timeout=timeout)

    def pids(self) -> set[int]:
        return {int(p.read_text()) for p in (self.state_dir / "run").glob("*.pid")}

    def channel(self, target: str | None = None) -> grpc.Channel:
        """To the edge (plaintext, as a client), or, as the operator with its certificate, to the
        east-west listener."""
        if target == self.mesh_listener:
            return self.secure_channel(target, GATEWAY)
        return grpc.insecure_channel(target or self.gateway)

    @property
    def operator(self) -> Identity:
        return infra.operator(self.topo, self.state_dir)

    def secure_channel(self, target: str, server: str, identity: Identity | None = None) -> grpc.Channel:
        """mTLS to `server` (a workload name) at `target`, as the operator or `identity`."""
        return grpc.secure_channel(target, (identity or self.operator).channel_credentials(),
                                   options=[("grpc.ssl_target_name_override", dns_name(server))])

    def postgres_dsn(self, role: str = infra.SUPERUSER) -> str:
        return infra.postgres_dsn(self.topo.infra, self.state_dir, role)

    async def events(self, name: str) -> Events:
        """A NATS connection as the operator."""
        return await infra.events(self.topo, self.state_dir, name)


def pytest_collection_modifyitems(items):
    """Chaos tests stop and start parts of the shared mesh: run them after everything else."""
    items.sort(key=lambda item: "tests/chaos/" in str(item.path).replace(os.sep, "/"))


def _running(pid: int) -> bool:
    """Alive and not a zombie (an exited child waiting for init to reap it is gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][0] != "Z"
    except OSError:
        return False


def _processes_using(state_dir: Path) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and _running(int(proc.name)):
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if str(state_dir) in cmdline:
                found.append(f"{proc.name}: {cmdline[:200]}")
    return found


@pytest.fixture(scope="session")
def mesh() -> MeshHandle:
    # Not under pytest's temp folder: another pytest session on the machine closes that folder
    # (mode 0700) to everyone else, and Postgres runs as its own user when we are root.
    state_dir = Path(tempfile.mkdtemp(prefix="aimesh-test-state-"))
    # The tests' own topology (small rate limits); spans go to the tracing test's collector.
    env = {**os.environ, "AIMESH_STATE": str(state_dir),
           "AIMESH_PORT_OFFSET": str(ports.SESSION_MESH), "AIMESH_TOPOLOGY": str(TOPOLOGY),
           "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{ports.OTLP_COLLECTOR}"}
    handle = MeshHandle(topology.load(TOPOLOGY, port_offset=ports.SESSION_MESH), state_dir, env)
    up = handle.cli("up", timeout=900)
    if up.returncode:
        handle.cli("down")
        pytest.fail(f"aimesh up failed ({up.returncode}):\n{up.stdout}\n{up.stderr}")
    yield handle
    pids = handle.pids()
    down = handle.cli("down")
    assert down.returncode == 0, down.stderr
    left = [pid for pid in pids if _running(pid)]
    assert not left, f"processes left after down: {left}"
    assert not _processes_using(state_dir), _processes_using(state_dir)
    shutil.rmtree(state_dir)   # kept, with its logs, when the session failed to stop cleanly


@pytest.fixture(scope="session")
def alice(mesh) -> str:
    return demo.login(mesh.gateway, "alice@demo.aimesh")


@pytest.fixture(scope="session")
def bob(mesh) -> str:
    return demo.login(mesh.gateway, "bob@demo.aimesh")


@pytest.fixture(scope="session")
def admin(mesh) -> str:
    return demo.login(mesh.gateway, "admin@demo.aimesh")


@pytest.fixture(scope="session")
def users(mesh):
    with mesh.channel() as channel:
        yield user_pb2_grpc.UserServiceStub(channel)
