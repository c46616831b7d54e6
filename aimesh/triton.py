"""Triton Inference Server for the local runner, from the `nvidia-pytriton` wheel (no Docker)."""
from __future__ import annotations

import filecmp
import importlib.util
import os
import re
import secrets
import shutil
import sys
import sysconfig
import urllib.error
import urllib.request
from pathlib import Path

import aimesh.models
import aimesh.paths
from aimesh import traces
from aimesh.component import Component
from aimesh.topology import Infra

MODELS = ("text_embedding", "recommender", "chat_lm", "moderation")

# In the Triton image (deploy/triton/Dockerfile) text_embedding is an ensemble with the same
# interface, TEXT -> EMBEDDING: the python model's tokenizer, then the ONNX graph on Triton's native
# onnxruntime backend on the GPU. The pip wheel's Triton that the local runner starts has only the
# python backend, so here it stays one python model. Served model -> {repository folder: its
# config file in the served model's folder of triton_models/}; any other model is one folder with
# its config.pbtxt.
IMAGE_FOLDERS = {
    "text_embedding": {"text_embedding": "ensemble.pbtxt",
                       "text_embedding_tokenizer": "tokenizer.pbtxt",
                       "text_embedding_encoder": "encoder.pbtxt"},
}


def server_dir() -> Path:
    """<site-packages>/pytriton/tritonserver, found without importing pytriton (a heavy import)."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("nvidia-pytriton is not installed in this environment")
    return Path(next(iter(spec.submodule_search_locations))) / "tritonserver"


def install_stub(server: Path) -> Path:
    """Put the python backend stub for this interpreter's version where Triton looks for it.

    The wheel ships one stub per Python version beside the backend, not in it. The copy stays
    inside the package: the stub's RPATH ($ORIGIN/../../../../nvidia_pytriton.libs) finds the
    bundled libcudart only from there. Idempotent; written to a temporary name, then renamed, so a
    concurrent start never sees half a file.
    """
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    source = server / "python_backend_stubs" / version / "triton_python_backend_stub"
    target = server / "backends" / "python" / "triton_python_backend_stub"
    if not target.exists() or not filecmp.cmp(source, target, shallow=False):
        partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
        shutil.copy2(source, partial)
        os.replace(partial, target)
    return target


# Each stub serves one request at a time (parallelism is the instance count): a BLAS thread pool
# in it only spins (sched_yield) between requests, on the cores the mesh shares. Measured with
# perf on the recommender: ~60% of its stubs' CPU under load was that spinning.
STUB_THREADS = {"OPENBLAS_NUM_THREADS": "1"}


def env() -> dict[str, str]:
    """What the stub's embedded Python needs to be this interpreter, with this environment's packages."""
    # The stub links libpython3.X.so by name: without the running interpreter's LIBDIR first, the
    # loader may pick a system libpython of another patch level against this interpreter's stdlib
    # ("'RLock' object has no attribute '_recursion_count'").
    library_path = [sysconfig.get_config_var("LIBDIR")]
    if os.environ.get("LD_LIBRARY_PATH"):
        library_path.append(os.environ["LD_LIBRARY_PATH"])
    # The stub embeds Python in isolated mode (PYTHONPATH and PYTHONHOME are ignored) under the
    # default program name "python3", so it finds its prefix, and with it site-packages, by the
    # first python3 on PATH. With this environment's bin first it reads this virtualenv's
    # pyvenv.cfg; otherwise it imports the base installation's packages (numpy 2 there crashes
    # TYPE_STRING tensors). pytriton itself starts Triton this way.
    path = [str(Path(sys.executable).parent), os.environ.get("PATH", os.defpath)]
    return {"LD_LIBRARY_PATH": os.pathsep.join(library_path), "PATH": os.pathsep.join(path),
            **STUB_THREADS}


def ready(http_port: int, models: tuple[str, ...] = MODELS, timeout_s: float = 1.0) -> bool:
    """True when every model answers 200 on Triton's HTTP readiness endpoint."""
    for model in models:
        url = f"http://127.0.0.1:{http_port}/v2/models/{model}/ready"
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as response:
                if response.status != 200:
                    return False
        except (urllib.error.URLError, OSError):   # not listening yet, or 400 while loading
            return False
    return True


def inference_counts(metrics_port: int, model: str) -> tuple[float, float]:
    """(inferences, executions) of a model so far, from Triton's Prometheus metrics: with dynamic
    batching, executions fall well below inferences."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as response:
        text = response.read().decode()

    def counter(name: str) -> float:
        match = re.search(rf'^{name}\{{[^}}]*model="{model}"[^}}]*\}} (\S+)$', text, re.MULTILINE)
        if not match:
            raise RuntimeError(f"{name} for {model} is not in Triton's metrics")
        return float(match.group(1))

    return counter("nv_inference_count"), counter("nv_inference_exec_count")


def folders(models: tuple[str, ...] = MODELS, *, image: bool = False) -> dict[str, tuple[str, str]]:
    """Repository folder -> (the served model whose source folder it comes from, config file)."""
    found = {}
    for model in models:
        image_folders = IMAGE_FOLDERS.get(model) if image else None
        for folder, config in (image_folders or {model: "config.pbtxt"}).items():
            found[folder] = (model, config)
    return found


def assemble(work_dir: Path, models: tuple[str, ...] = MODELS,
             sources: Path = aimesh.paths.TRITON_MODELS, *, image: bool = False,
             swaps: dict[str, dict[str, str]] | None = None) -> Path:
    """Triton's model repository, put together in work_dir/models from the sources and the builds.

    Each folder (see `folders`: for the image, text_embedding's ensemble) gets its config and one
    folder per version, filled by what the config runs on: a python model gets a copy of its source
    folder (the version folders with their model.py, shared modules beside them) and in each
    version folder a link `artifact` to the model's built files in the cache (aimesh.models),
    which stay outside the clone; an onnxruntime model gets a link `model.onnx` to the built graph
    (where that backend looks); an ensemble, empty version folders. Raises if one is not built.
    `swaps` (aimesh/hotswap.py): versions swapped in at run time are served in place of the old.
    """
    from aimesh.hotswap import served_policy
    missing = [m for m in models if aimesh.models.artifact(m) and not aimesh.models.is_current(m)]
    if missing:
        raise RuntimeError(f"model artifacts not built: {', '.join(missing)}; "
                           f"run `aimesh models build`")
    repository = work_dir / "models"
    fresh = work_dir / "models.partial"
    shutil.rmtree(fresh, ignore_errors=True)
    for folder, (model, config_file) in folders(models, image=image).items():
        source, target = sources / model, fresh / folder
        config = served_policy((source / config_file).read_text(), (swaps or {}).get(folder, {}))
        declared = re.search(r'^(?:backend|platform):\s*"(\w+)"', config, re.MULTILINE)
        if declared is None:
            raise ValueError(f"{source / config_file} names no backend or platform")
        runs_on = declared.group(1)
        if runs_on == "python":
            shutil.copytree(source, target,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.pbtxt"))
        target.mkdir(parents=True, exist_ok=True)
        (target / "config.pbtxt").write_text(config)
        built = aimesh.models.output(model) if aimesh.models.artifact(model) else None
        for version in (v for v in source.iterdir() if v.is_dir() and v.name.isdigit()):
            (target / version.name).mkdir(exist_ok=True)
            if built and runs_on == "python":
                (target / version.name / "artifact").symlink_to(built, target_is_directory=True)
            elif built and runs_on == "onnxruntime":
                (target / version.name / "model.onnx").symlink_to(built / "model.onnx")
    shutil.rmtree(repository, ignore_errors=True)
    os.rename(fresh, repository)
    return repository


ADMIN_HEADER = "aimesh-admin"      # Triton answers its admin APIs only to requests carrying it
ADMIN_APIS = "model-repository,shared-memory,trace,logging"   # load/unload, memory, tracing


def admin_key(state_dir: Path) -> str:
    """The operator's key to Triton's admin APIs (made once, 0600, in the state's secrets)."""
    path = Path(state_dir) / "secrets" / "triton-admin"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(path.parent, 0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as file:
            file.write(secrets.token_urlsafe(24))
    return path.read_text().strip()


def admin_headers(state_dir: Path) -> dict[str, str]:
    """What the operator sends with a model load or unload (HTTP or gRPC)."""
    return {ADMIN_HEADER: admin_key(state_dir)}


# Triton traces every request that carries a trace context, whatever the rate, and one in RATE of
# the others: the rarest rate its trace API takes (it refuses 0 while tracing is on).
TRACE_RATE = 2**31 - 1


def trace_flags(url: str, level: str) -> list[str]:
    """Triton traces the requests that carry a trace context at `level` (OFF or TIMESTAMPS,
    changeable live through its trace API) and sends the spans (the request, each model, the
    compute: under the caller's client span) as OTLP/HTTP JSON to `url`."""
    return ["--trace-config=mode=opentelemetry", f"--trace-config=rate={TRACE_RATE}", "--trace-config=count=-1",
            f"--trace-config=level={level}", f"--trace-config=opentelemetry,url={url}",
            "--trace-config=opentelemetry,resource=service.name=triton",
            "--trace-config=opentelemetry,bsp_schedule_delay=500"]


def tracing(infra: Infra, state_dir: Path, level: str) -> list[str]:
    """Into the mesh's Phoenix, while it runs (as the services: a Triton started before it does
    not), at `level` (aimesh.traces.triton_level), which the trace API changes live."""
    if not traces.running(state_dir):
        return []
    return trace_flags(traces.json_endpoint(infra), level)


def assembled(work_dir: Path, models: tuple[str, ...], state_dir: Path) -> Path:
    """The project's repository with the versions swapped in at run time."""
    from aimesh import hotswap  # here: it imports the kit, which a benchmark's Triton needs not
    return assemble(work_dir, models, swaps=hotswap.swaps(state_dir))


def component(infra: Infra, state_dir: Path, models: tuple[str, ...] = MODELS,
              repository: Path | None = None, trace_level: str = "OFF") -> Component:
    """Triton serving `models` from the project's repository (assembled here), or from
    `repository`, one already put together (a benchmark's own)."""
    server = server_dir()
    install_stub(server)
    work_dir = Path(state_dir) / "triton"
    work_dir.mkdir(parents=True, exist_ok=True)
    argv = [
        str(server / "bin" / "tritonserver"),
        f"--model-repository={repository or assembled(work_dir, models, state_dir)}",
        f"--backend-directory={server / 'backends'}",
        # Explicit control loads only the named models, so a half-written model folder in the
        # repository cannot stop the server, and readiness is a per-model question.
        "--model-control-mode=explicit",
        *(f"--load-model={model}" for model in models),
        "--exit-on-error=true",
        "--http-address=127.0.0.1", f"--http-port={infra.triton_http_port}",
        "--grpc-address=127.0.0.1", f"--grpc-port={infra.triton_grpc_port}",
        "--metrics-address=127.0.0.1", f"--metrics-port={infra.triton_metrics_port}",
        # Name the python backend's /dev/shm regions after this server: one a crash leaves
        # behind can be traced to it (and a dev mesh and a test mesh stay apart).
        f"--backend-config=python,shm-region-prefix-name=aimesh_triton_{infra.triton_grpc_port}_",
        # Finish in-flight requests on SIGTERM, but within the runner's stop timeout.
        "--exit-timeout-secs=10",
        "--log-verbose=0",
        # Loading and unloading models (code execution: docs/deploy.md) only with the operator's
        # key, on HTTP and on gRPC (which workloads reach through the east-west listener).
        # Triton takes the key on its command line: local users see it in the process list.
        f"--http-restricted-api={ADMIN_APIS}:{ADMIN_HEADER}={admin_key(state_dir)}",
        f"--grpc-restricted-protocol={ADMIN_APIS}:{ADMIN_HEADER}={admin_key(state_dir)}",
        *tracing(infra, state_dir, trace_level),
    ]
    return Component(
        name="triton", argv=argv, env=env(), cwd=work_dir,
        healthy=lambda: ready(infra.triton_http_port, models),
        start_timeout_s=90.0, stop_timeout_s=15.0,
    )
