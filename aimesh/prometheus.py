"""Prometheus for the local runner: Debian's `prometheus` package (installed by `bin/aimesh` where
it runs as root, like chromium for the tests; elsewhere `up` says how and goes on without it),
scraping Envoy, Triton and every instance on loopback, with the recording and alert rules
rendered from the topology by the same renderer as compose's (aimesh/deploy/observability.py).
Its data stays in the state dir, capped by the topology's `observability.retention`."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from .component import Component, http_ok
from .deploy.observability import RULES_FILE, prometheus, rules
from .topology import Topology

BINARY = "/usr/bin/prometheus"
PACKAGE = "prometheus"
APT_TIMEOUT_S = 900
INSTALL_HINT = f"metrics: Debian's {PACKAGE} is not installed (sudo apt-get install {PACKAGE}); going on without it"


def installed() -> bool:
    return bool(shutil.which(BINARY))


def install() -> bool:
    """apt-get it when missing and we are root (the package's own service is not started);
    True when it is there afterwards."""
    if installed() or os.geteuid() != 0:
        return installed()
    print(f"aimesh: installing {PACKAGE} (a Debian package, once)", flush=True)
    quiet: dict[str, Any] = {"stdout": subprocess.DEVNULL, "timeout": APT_TIMEOUT_S,
                             "env": {**os.environ, "DEBIAN_FRONTEND": "noninteractive",
                                     "RUNLEVEL": "1"}}   # no service start from the package
    # policy-rc.d refuses every service start while the package installs (a container has no init)
    policy = Path("/usr/sbin/policy-rc.d")
    added = not policy.exists()
    if added:
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
    try:
        subprocess.run(["apt-get", "update", "-qq"], check=True, **quiet)
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", PACKAGE],
                       check=True, **quiet)
    finally:
        if added:
            policy.unlink()
    return installed()


def component(topo: Topology, state_dir: Path) -> Component:
    folder = Path(state_dir) / "prometheus"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "prometheus.yml").write_text(yaml.safe_dump(prometheus(topo, host=lambda _: "127.0.0.1")))
    (folder / RULES_FILE).write_text(yaml.safe_dump(rules(topo), sort_keys=False))
    port = topo.infra.prometheus_port
    return Component(
        name="prometheus",
        argv=[BINARY, f"--config.file={folder / 'prometheus.yml'}",
              f"--storage.tsdb.path={folder / 'data'}",
              f"--storage.tsdb.retention.size={topo.observability.retention_bytes}B",
              f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        cwd=folder,
        healthy=lambda: http_ok(f"http://127.0.0.1:{port}/-/ready"),
        start_timeout_s=30)
