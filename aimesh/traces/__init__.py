"""The trace backend for the local runner: Arize Phoenix (OTLP over gRPC and HTTP, a UI, a REST
API), from PyPI in a virtualenv of its own (requirements-phoenix.txt, built once per its content by
bin/venv, like the runtime's). Started by `aimesh up --traces`: about 420 MB and 20 s to start on
this machine, too much for every run. Bound to loopback (serve.py), telemetry off, its SQLite
database in the state dir, capped by age and size. While it runs, Envoy, Triton and every service
export their spans to it (Triton's as OTLP/JSON, on a port of its own: serve.py)."""
from __future__ import annotations

import json
import os
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from ..component import Component, http_ok
from ..paths import ROOT
from ..topology import Infra, Topology

REQUIREMENTS = ROOT / "requirements-phoenix.txt"
SERVE = Path(__file__).with_name("serve.py")
PROJECT = "default"


def venv() -> Path:
    """Phoenix's virtualenv, built when missing (minutes, once)."""
    built = subprocess.run([str(ROOT / "bin" / "venv"), "phoenix", "import phoenix", str(REQUIREMENTS)],
                           check=True, capture_output=True, text=True)
    return Path(built.stdout.strip())


def otlp_endpoint(infra: Infra) -> str:
    return f"http://127.0.0.1:{infra.phoenix_grpc_port}"


def running(state_dir: Path) -> bool:
    from ..supervisor import Supervisor
    return Supervisor(Path(state_dir)).pid("phoenix") is not None


def exporting_to(infra: Infra, state_dir: Path) -> str:
    """Where spans go: this mesh's Phoenix while it runs, else what the environment names
    (OTEL_EXPORTER_OTLP_ENDPOINT), else nowhere ("")."""
    if running(state_dir):
        return otlp_endpoint(infra)
    return os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "")


def json_endpoint(infra: Infra) -> str:
    """Where Triton sends its spans (OTLP/HTTP as JSON, translated by serve.py)."""
    return f"http://127.0.0.1:{infra.phoenix_json_port}/v1/traces"


def ui(infra: Infra) -> str:
    return f"http://127.0.0.1:{infra.phoenix_port}"


# Phoenix ingests at a lower CPU priority: here it shares the cores with the mesh it watches, and
# requests come first; spans wait in the exporters' batches and its queue until the cores are free
# (bench/tracing_cost.py measured this against normal priority and SCHED_IDLE: docs/status.md).
NICENESS = 10


def component(infra: Infra, state_dir: Path, retention_s: float = 7 * 86400,
              storage_bytes: int = 1 << 30) -> Component:
    data = Path(state_dir) / "phoenix"
    data.mkdir(parents=True, exist_ok=True)
    return Component(
        name="phoenix", argv=["nice", "-n", str(NICENESS), str(venv() / "bin" / "python"), str(SERVE)], cwd=data,
        env={"PHOENIX_HOST": "127.0.0.1", "PHOENIX_PORT": str(infra.phoenix_port),
             "PHOENIX_GRPC_PORT": str(infra.phoenix_grpc_port), "PHOENIX_WORKING_DIR": str(data),
             "PHOENIX_OTLP_JSON_PORT": str(infra.phoenix_json_port),
             "PHOENIX_TELEMETRY_ENABLED": "false",
             # storage: traces older than the retention are deleted (in whole days, at least
             # one); past the size cap new spans are refused until the retention frees room
             "PHOENIX_DEFAULT_RETENTION_POLICY_DAYS": str(max(1, round(retention_s / 86400))),
             "PHOENIX_DATABASE_ALLOCATED_STORAGE_CAPACITY_GIBIBYTES": f"{storage_bytes / (1 << 30):g}",
             "PHOENIX_DATABASE_USAGE_INSERTION_BLOCKING_THRESHOLD_PERCENTAGE": "100"},
        healthy=lambda: http_ok(f"{ui(infra)}/healthz"), start_timeout_s=90)


def triton_level(sampling: float, own_spans: bool) -> str:
    """Triton's own spans (the request, each model, the compute) only when asked for
    (`observability.triton_spans`): Triton 2.51, the pip wheel's, frees a traced request's lock
    while holding it and crashes (SIGSEGV) after some thousands of traced calls under load
    (triton-inference-server/server#7795, fixed upstream by #8144 in a later release; measured
    here: docs/status.md). Without them a trace still shows each model call as the service's
    client span and the east-west hop. And Triton traces every call that carries a trace context,
    sampled or not (it cannot tell), so it traces only while every request is: at a lower share
    its spans would be orphans."""
    return "TIMESTAMPS" if own_spans and sampling >= 1.0 else "OFF"


def sample(topo: Topology, state_dir: Path, sampling: float, triton_spans: bool | None = None) -> None:
    """Set the share of requests traced, live: the edge's decision (Envoy's runtime key, which the
    services follow) and Triton's tracing with it (its own spans as `triton_spans` says, else as
    the topology does)."""
    from .. import triton
    own_spans = topo.observability.triton_spans if triton_spans is None else triton_spans
    admin = f"http://127.0.0.1:{topo.gateway.admin_port}/runtime_modify?tracing.random_sampling={sampling * 100:g}"
    urllib.request.urlopen(urllib.request.Request(admin, method="POST"), timeout=5).read()
    setting = urllib.request.Request(
        f"http://127.0.0.1:{topo.infra.triton_http_port}/v2/trace/setting", method="POST",
        data=json.dumps({"trace_level": [triton_level(sampling, own_spans)],
                         "trace_rate": str(triton.TRACE_RATE)}).encode(),
        headers=triton.admin_headers(state_dir))
    try:
        urllib.request.urlopen(setting, timeout=5).read()
    except urllib.error.HTTPError as refused:
        raise RuntimeError(f"Triton refused its trace level: {refused.read().decode()}") from refused


def spans(infra: Infra, trace_id: str) -> list[dict]:
    """Every span Phoenix holds of one trace (its REST API)."""
    query = urllib.parse.urlencode({"trace_id": trace_id, "limit": 1000})
    with urllib.request.urlopen(f"{ui(infra)}/v1/projects/{PROJECT}/spans?{query}", timeout=5) as response:
        return json.loads(response.read())["data"]
