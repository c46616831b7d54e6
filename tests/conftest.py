"""One mesh per test session, brought up from an empty state directory the way a user does
(`aimesh up`), on ports shifted (tests/ports.py) so a developer's own mesh can keep running.
Chaos tests run last."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import asyncpg
import pytest

from aimesh import demo
from aimesh.harness import MeshUnderTest
from aimesh.user.v1 import user_pb2_grpc
from tests import ports

TOPOLOGY = Path(__file__).with_name("topology.yaml")


FIGURES: list[str] = []


@pytest.fixture
def figures() -> list[str]:
    """Lines a test reports (the counts it asserted on), printed at the end of the run."""
    return FIGURES


def pytest_terminal_summary(terminalreporter):
    if FIGURES:
        terminalreporter.section("figures")
        for line in FIGURES:
            terminalreporter.write_line(line)


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
def mesh() -> MeshUnderTest:
    # Not under pytest's temp folder: another pytest session on the machine closes that folder
    # (mode 0700) to everyone else, and Postgres runs as its own user when we are root.
    state_dir = Path(tempfile.mkdtemp(prefix="aimesh-test-state-"))
    # The tests' own topology (small rate limits), with the trace backend: the trace-based tests
    # read every span back from it.
    handle = MeshUnderTest(state_dir, ports.SESSION_MESH, TOPOLOGY)
    up = handle.cli("up", "--traces", timeout=900)
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


@pytest.fixture
async def postgres(mesh):
    """pool(schema): a small pool on the mesh's Postgres, in one service's schema, closed after."""
    pools = {}

    async def pool(schema: str) -> asyncpg.Pool:
        pools[schema] = await asyncpg.create_pool(mesh.postgres_dsn(), min_size=1, max_size=2,
                                                  server_settings={"search_path": schema})
        return pools[schema]
    yield pool
    for opened in pools.values():
        await opened.close()
