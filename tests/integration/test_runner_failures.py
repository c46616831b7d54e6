"""`aimesh up` when something is wrong: it fails, names the component, and leaves nothing behind.
These use their own ports and state, beside the session's mesh."""
import socket
import subprocess
import sys

import pytest

from aimesh import topology
from aimesh.component import Component
from aimesh.mesh import Mesh
from aimesh.paths import ROOT
from aimesh.supervisor import StartFailed
from tests import ports

OFFSET = ports.FAILING_MESH


def test_up_with_a_busy_port_exits_non_zero_naming_the_port(tmp_path):
    topo = topology.load(port_offset=OFFSET)
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # past runs' TIME_WAIT
        holder.bind(("127.0.0.1", topo.infra.postgres_port))
        holder.listen()
        up = subprocess.run([sys.executable, "-m", "aimesh", "up"], cwd=ROOT, capture_output=True,
                            text=True, timeout=60,
                            env={**__import__("os").environ, "AIMESH_STATE": str(tmp_path),
                                 "AIMESH_PORT_OFFSET": str(OFFSET)})
    assert up.returncode == 1
    assert f"{topo.infra.postgres_port} (postgres)" in up.stderr


def test_a_component_that_cannot_start_stops_everything_already_started(tmp_path, monkeypatch):
    mesh = Mesh(topology.load(port_offset=OFFSET), tmp_path)
    broken_gateway = Component("envoy", [sys.executable, "-c", "print('bad listener: boom'); exit(1)"],
                               healthy=lambda: False)
    monkeypatch.setattr(mesh, "envoy", lambda: broken_gateway)
    try:
        with pytest.raises(StartFailed) as failure:
            mesh.up(demo=False, on_progress=lambda _: None)
        assert failure.value.component == "envoy" and "boom" in str(failure.value), str(failure.value)
        assert mesh.supervisor.running() == {}
    finally:
        mesh.down(on_progress=lambda _: None)   # a no-op unless the test failed
