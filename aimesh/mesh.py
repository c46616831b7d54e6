"""The whole mesh on this machine: bring it up in dependency order, report, bring it down."""
from __future__ import annotations

import functools
import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path

from . import certs, codegen, envoy, infra, prometheus, services, traces, triton, web
from .component import Component, http_ok
from .paths import ROOT, venv_bin
from .supervisor import StartFailed, Supervisor
from .topology import Topology


class Refused(Exception):
    """A request the mesh cannot do as asked (a user's mistake): the CLI prints it as one line."""


class PortInUse(Refused):
    pass


class Mesh:
    def __init__(self, topo: Topology, state_dir: Path):
        self.topo = topo
        self.state_dir = state_dir
        self.supervisor = Supervisor(state_dir)
        self._export_traces()       # a component started now exports where the others do

    def _export_traces(self) -> None:
        """The services (children of this process) send their spans where Envoy does."""
        if endpoint := traces.exporting_to(self.topo.infra, self.state_dir):
            os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = endpoint

    def envoy(self) -> Component:
        config = envoy.write(self.topo, self.state_dir)
        envoy.validate(config)
        admin = self.topo.gateway.admin_port
        return Component(
            name="envoy",
            argv=[venv_bin("envoy"), "-c", str(config), "--disable-hot-restart",
                  "--log-level", "warn"],
            healthy=lambda: http_ok(f"http://127.0.0.1:{admin}/ready"),
            start_timeout_s=20,
        )

    def trace_backend(self) -> Component:
        seen = self.topo.observability
        return traces.component(self.topo.infra, self.state_dir, seen.trace_retention_s,
                                seen.trace_storage_bytes)

    def model_server(self) -> Component:
        seen = self.topo.observability
        return triton.component(self.topo.infra, self.state_dir,
                                trace_level=traces.triton_level(seen.trace_sampling, seen.triton_spans))

    def renewer(self) -> Component:
        """Renews every workload's certificate while the mesh runs (aimesh/certs.py)."""
        lifetime = self.topo.identity.certificate_lifetime_s
        certs.Authority(self.state_dir).ensure(self.topo.workloads(), lifetime)
        return Component(
            name="certs",
            argv=[sys.executable, "-m", "aimesh.certs", "renew", str(self.state_dir),
                  str(lifetime), *self.topo.workloads()],
            env={"PYTHONPATH": f"{ROOT}:{ROOT / 'gen' / 'python'}"}, cwd=ROOT)

    def _makers(self) -> dict:
        makers: dict[str, Callable[[], Component]] = {"envoy": self.envoy,
                  "certs": self.renewer,
                  "triton": self.model_server,
                  "postgres": lambda: infra.postgres(self.topo, self.state_dir),
                  "nats": lambda: infra.nats(self.topo, self.state_dir),
                  "phoenix": self.trace_backend}
        if prometheus.installed():
            makers["prometheus"] = lambda: prometheus.component(self.topo, self.state_dir)
        for service, instance in self.topo.instances():
            makers[instance.name] = functools.partial(services.component, self.topo, service,
                                                      instance, self.state_dir, demo=False)
        return makers

    def component(self, name: str) -> Component:
        """One component as `up` starts it (demo data is seeded by `up` only)."""
        makers = self._makers()
        if name not in makers:
            raise Refused(f"no component {name!r}; there are {', '.join(makers)}")
        return makers[name]()

    def start(self, name: str, on_progress=print) -> None:
        """Start one stopped component of a running mesh and wait until it is healthy."""
        if self.supervisor.pid(name) is not None:
            raise Refused(f"{name} is already running (`aimesh stop {name}` first)")
        self._start_and_wait([self.component(name)], on_progress)

    def stop(self, name: str, *, kill: bool = False) -> None:
        """Stop one component: gracefully, or with SIGKILL as a crash would."""
        if name not in self._makers():
            raise Refused(f"no component {name!r}; there are {', '.join(self._makers())}")
        if kill:
            self.supervisor.kill(name)
        else:
            self.supervisor.stop(name)

    def service_components(self, *, demo: bool) -> list[Component]:
        return [services.component(self.topo, service, instance, self.state_dir, demo=demo)
                for service, instance in self.topo.instances()]

    def up(self, *, demo: bool = True, with_traces: bool = False, on_progress=print) -> None:
        """Start everything and wait until all is healthy; on failure stop what was started."""
        if self.supervisor.running():
            raise Refused(f"the mesh in {self.state_dir} is already running "
                               f"({', '.join(self.supervisor.running())}); run `aimesh down` first")
        check_ports_free(self.topo)
        codegen.generate()
        web.build()          # Envoy serves the page from web/dist
        try:
            # Triton loads models slowest: start it first, wait for it last.
            if self.topo.identity.mtls:   # certificates first: every other part reads them
                self._start_and_wait([self.renewer()], on_progress)
            if with_traces:   # before anything that sends spans
                self._start_and_wait([self.trace_backend()], on_progress)
                self._export_traces()
            model_server = self.model_server()
            stores = [infra.postgres(self.topo, self.state_dir),
                      infra.nats(self.topo, self.state_dir)]
            self._start([model_server, *stores], on_progress)
            self._wait(stores, on_progress)
            self._start_and_wait(self.service_components(demo=demo), on_progress)
            self._start_and_wait([self.envoy()], on_progress)
            if prometheus.installed():
                self._start_and_wait([prometheus.component(self.topo, self.state_dir)], on_progress)
            else:
                on_progress(f"  {prometheus.INSTALL_HINT}")
            self._wait([model_server], on_progress)
        except BaseException:
            self.down(on_progress=lambda _: None)
            raise

    def _start(self, components: list[Component], on_progress) -> None:
        for component in components:
            self.supervisor.start(component)
            on_progress(f"  started {component.name}")

    def _wait(self, components: list[Component], on_progress) -> None:
        self.supervisor.wait_healthy(components)
        on_progress(f"  healthy: {', '.join(c.name for c in components)}")

    def _start_and_wait(self, components: list[Component], on_progress) -> None:
        self._start(components, on_progress)
        self._wait(components, on_progress)

    def down(self, on_progress=print) -> None:
        """Stop in reverse dependency order: the gateway first, the stores last."""
        order = ["prometheus", "envoy", *[i.name for _, i in reversed(list(self.topo.instances()))],
                 "triton", "nats", "postgres", "phoenix", "certs"]
        started = self.supervisor.started()     # a crashed one too: what it left behind
        for name in [*order, *[n for n in started if n not in order]]:
            if name in started:
                self.supervisor.stop(name)
                on_progress(f"  stopped {name}")

    def status(self) -> dict[str, str]:
        running = self.supervisor.running()
        names = ["certs", "postgres", "nats", "triton", *[i.name for _, i in self.topo.instances()],
                 "envoy", *(["prometheus"] if prometheus.installed() else []),
                 *(["phoenix"] if "phoenix" in self.supervisor.running() else [])]
        return {name: (f"running (pid {running[name]})" if name in running else "stopped")
                for name in names}


def check_ports_free(topo: Topology) -> None:
    busy = []
    for owner, port in topo.ports().items():
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                busy.append(f"{port} ({owner})")
    if busy:
        raise PortInUse(f"port in use: {', '.join(busy)}. Stop what holds it, or shift every "
                        f"port with AIMESH_PORT_OFFSET=<n>.")


__all__ = ["Mesh", "PortInUse", "Refused", "StartFailed"]
