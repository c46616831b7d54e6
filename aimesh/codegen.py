"""`aimesh gen`: Python stubs (.py, .pyi, _grpc.py) and the descriptor set, from proto/ via buf.

google/api/*.proto and google/rpc/error_details.proto come from the installed
googleapis-common-protos package (copied into build/proto-deps, which buf.yaml lists as a
module), never from committed copies: the descriptor set then holds the error details every
refusal carries, so Envoy's JSON transcoder writes them into an error's body and reflection
serves them to grpcurl. Output is skipped when a stamp of every input is current."""
from __future__ import annotations

import hashlib
import importlib
import shutil
import subprocess
from pathlib import Path
from pkgutil import extend_path

import google.api
import google.rpc

from .paths import DESCRIPTOR_SET, GEN, ROOT, venv_bin

DEPS = ROOT / "build" / "proto-deps"
GOOGLE_PROTOS = {google.api: ("annotations.proto", "http.proto"), google.rpc: ("error_details.proto",)}
STAMP = GEN / ".stamp"
BASELINE = ROOT / "proto" / "baseline.binpb"


def _inputs() -> list[Path]:
    protos = sorted((ROOT / "proto").rglob("*.proto"))
    return [*protos, ROOT / "buf.yaml", ROOT / "buf.gen.yaml", Path(__file__)]


def _digest() -> str:
    h = hashlib.sha256()
    for path in _inputs():
        h.update(str(path.relative_to(ROOT)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def buf(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([venv_bin("buf"), *args], cwd=ROOT, capture_output=True, text=True)


def _check(result: subprocess.CompletedProcess, what: str) -> None:
    if result.returncode:
        raise RuntimeError(f"{what} failed:\n{result.stdout}{result.stderr}")


def vendor_google_protos() -> None:
    for package, names in GOOGLE_PROTOS.items():
        source = Path(package.__path__[0])
        target = DEPS / Path(*package.__name__.split("."))
        target.mkdir(parents=True, exist_ok=True)
        for name in names:
            shutil.copyfile(source / name, target / name)


def generate(force: bool = False) -> bool:
    """Regenerate when an input changed; True when it did."""
    digest = _digest()
    if not force and STAMP.exists() and STAMP.read_text() == digest and DESCRIPTOR_SET.exists():
        return False
    vendor_google_protos()
    _check(buf("lint"), "buf lint")
    _check(buf("generate"), "buf generate")
    _check(buf("build", "--as-file-descriptor-set", "-o", str(DESCRIPTOR_SET)), "buf build")
    STAMP.write_text(digest)
    _find_new_stubs()
    return True


def _find_new_stubs() -> None:
    """Let this process import stubs generated just now: the aimesh package extended its path
    (aimesh/__init__.py) only with the gen/python/aimesh that existed when it was imported."""
    import aimesh
    importlib.invalidate_caches()      # forgets that gen/python did not exist at start
    aimesh.__path__ = extend_path(aimesh.__path__, "aimesh")


def breaking() -> subprocess.CompletedProcess:
    """buf breaking (FILE rules) of proto/ against the committed baseline image.

    `bin/aimesh gen --baseline` accepts the current contracts as the new baseline: do it only
    for a reviewed, intended break (or after adding fields, to guard them too)."""
    vendor_google_protos()
    return buf("breaking", "proto", "--against", str(BASELINE.relative_to(ROOT)))


def update_baseline() -> None:
    """Accept the current contracts as the new baseline (an intentional, reviewed step)."""
    vendor_google_protos()
    _check(buf("build", "--exclude-source-info", "-o", str(BASELINE.relative_to(ROOT))),
           "buf build")
