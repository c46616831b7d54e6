"""The supervisor with real (tiny) processes: failures are named with their log, stops are total."""
import socket
import sys
import time

import pytest

from aimesh import topology
from aimesh.component import Component
from aimesh.mesh import PortInUse, check_ports_free
from aimesh.supervisor import StartFailed, Supervisor
from tests import ports


def python(code: str, name: str = "thing", **kwargs) -> Component:
    return Component(name=name, argv=[sys.executable, "-c", code], **kwargs)


def test_a_process_that_exits_fails_naming_it_with_its_log_tail(tmp_path):
    supervisor = Supervisor(tmp_path)
    broken = python("import sys; print('cannot open config: boom', flush=True); sys.exit(3)",
                    healthy=lambda: False)
    supervisor.start(broken)
    with pytest.raises(StartFailed) as failure:
        supervisor.wait_healthy([broken])
    assert failure.value.component == "thing"
    assert "the process exited" in str(failure.value) and "cannot open config: boom" in str(failure.value)


def test_a_process_that_never_gets_healthy_fails_after_its_start_timeout(tmp_path):
    supervisor = Supervisor(tmp_path)
    stuck = python("import time; time.sleep(60)", healthy=lambda: False, start_timeout_s=0.5)
    supervisor.start(stuck)
    try:
        with pytest.raises(StartFailed, match="not healthy after"):
            supervisor.wait_healthy([stuck])
    finally:
        supervisor.stop("thing")
    assert supervisor.running() == {}


def test_after_start_runs_once_healthy(tmp_path):
    supervisor = Supervisor(tmp_path)
    ran = []
    ready = python("import time; time.sleep(60)", after_start=lambda: ran.append(True))
    supervisor.start(ready)
    try:
        supervisor.wait_healthy([ready])
        assert ran == [True]
    finally:
        supervisor.stop("thing")


def test_stop_ends_the_whole_process_group_even_when_sigterm_is_ignored(tmp_path):
    supervisor = Supervisor(tmp_path)
    code = ("import signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
            "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']);"
            "print(child.pid, flush=True); time.sleep(60)")
    pid = supervisor.start(python(code))
    log = supervisor.log_path("thing")
    deadline = time.monotonic() + 10
    while not log.read_text().strip().splitlines()[-1].isdigit():
        assert time.monotonic() < deadline, "the child never started"
        time.sleep(0.05)
    child = int(log.read_text().strip().splitlines()[-1])
    supervisor.stop("thing", timeout_s=0.5)
    assert supervisor.pid("thing") is None
    for gone in (pid, child):
        with pytest.raises(OSError):
            stat = open(f"/proc/{gone}/stat").read()
            if stat.rsplit(") ", 1)[1][0] == "Z":
                raise OSError("zombie")


def test_a_busy_port_is_refused_naming_its_owner():
    topo = topology.load(port_offset=ports.PORT_CHECK)
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # past runs' TIME_WAIT
        holder.bind(("127.0.0.1", topo.gateway.edge_port))
        holder.listen()
        with pytest.raises(PortInUse, match=f"{topo.gateway.edge_port} \\(envoy edge\\)"):
            check_ports_free(topo)


def test_stop_waits_the_components_own_stop_timeout_then_kills(tmp_path):
    """A process that ignores SIGTERM is killed once its Component.stop_timeout_s has passed
    (recorded at start, since `down` makes no components), not after the default 15 s."""
    supervisor = Supervisor(tmp_path)
    stubborn = python("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                      "print('ready', flush=True); time.sleep(60)", stop_timeout_s=0.5,
                      healthy=lambda: "ready" in supervisor.log_path("thing").read_text())
    supervisor.start(stubborn)
    supervisor.wait_healthy([stubborn])
    started = time.monotonic()
    supervisor.stop("thing")
    assert time.monotonic() - started < 10          # the default would wait 15 s
    assert supervisor.running() == {}


def test_stop_ends_what_a_crashed_component_left_running(tmp_path):
    """A component that died (Triton's SIGSEGV) can leave its children running in its group
    (Triton's python stubs): stop, as `down` calls it for every component started, ends them."""
    supervisor = Supervisor(tmp_path)
    code = ("import os, subprocess, sys; child = subprocess.Popen([sys.executable, '-c', "
            "'import time; time.sleep(60)']); print(child.pid, flush=True); os._exit(11)")
    pid = supervisor.start(python(code))
    log = supervisor.log_path("thing")
    deadline = time.monotonic() + 10
    while not log.read_text().strip().splitlines()[-1].isdigit() or supervisor.pid("thing") is not None:
        assert time.monotonic() < deadline, "the component never crashed"
        time.sleep(0.05)
    child = int(log.read_text().strip().splitlines()[-1])
    assert open(f"/proc/{child}/stat").read().rsplit(") ", 1)[1][0] != "Z"   # outlived its parent
    assert supervisor.started() == ["thing"] and supervisor.running() == {}
    supervisor.stop("thing", timeout_s=0.5)
    assert supervisor.started() == []
    for gone in (pid, child):
        with pytest.raises(OSError):
            stat = open(f"/proc/{gone}/stat").read()
            if stat.rsplit(") ", 1)[1][0] == "Z":
                raise OSError("zombie")
