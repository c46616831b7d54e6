"""`aimesh web`: builds the page Envoy serves (web/dist) from web/ and proto/, fully offline
once npm's packages are installed.

npm installs web/package-lock.json into ~/.cache/aimesh/web-node-<content key> (once per lock
file and Node version; web/node_modules links there). Then web/package.json's `build` script,
the one recipe the Envoy image runs too: protoc-gen-es writes the TypeScript messages and service
descriptors into web/gen through buf, tsc type-checks, esbuild bundles into web/dist. Skipped
when a stamp of every input is current."""
from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

from . import codegen, envoy
from .paths import ROOT, WEB, WEB_DIST

NODE_MODULES = WEB / "node_modules"
STAMP = WEB_DIST / ".stamp"
CACHE = Path(os.environ.get("AIMESH_CACHE", Path.home() / ".cache" / "aimesh"))
BUILT = tuple(file for file, _ in envoy.WEB_FILES.values())   # what Envoy serves
NPM_TIMEOUT_S = 600                              # a first install fetches ~70 MB from npm


def _inputs() -> list[Path]:
    sources = sorted((WEB / "src").rglob("*.ts"))
    return [*sources, *(WEB / f for f in ("index.html", "app.css", "package.json",
                                          "package-lock.json", "tsconfig.json", "buf.gen.yaml")),
            *sorted((ROOT / "proto").rglob("*.proto")), Path(__file__)]


def _digest(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for path in paths:
        h.update(str(path.relative_to(ROOT)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def _run(*command: str, cwd: Path, timeout_s: float = NPM_TIMEOUT_S) -> None:
    # buf comes from the virtualenv: put it on PATH whoever runs this (bin/aimesh does already).
    env = {**os.environ, "PATH": f"{Path(codegen.venv_bin('buf')).parent}:{os.environ['PATH']}"}
    try:
        result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True,
                                timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"{' '.join(command)} took over {timeout_s:.0f} s") from None
    if result.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stdout}{result.stderr}")


def _node_modules() -> None:
    """npm ci into the cache, once per lock file and Node version; web/node_modules links there."""
    if not shutil.which("npm"):
        raise RuntimeError("the page needs Node.js 18+ with npm (Debian: apt-get install nodejs npm)")
    node = subprocess.run(["node", "--version"], capture_output=True, text=True, timeout=30).stdout
    key = hashlib.sha256((WEB / "package-lock.json").read_bytes() + node.encode()).hexdigest()[:16]
    home = CACHE / f"web-node-{key}"
    if not (home / ".ready").exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        with open(CACHE / ".web-node.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not (home / ".ready").exists():
                shutil.rmtree(home, ignore_errors=True)
                home.mkdir(parents=True)
                for name in ("package.json", "package-lock.json"):
                    shutil.copyfile(WEB / name, home / name)
                _run("npm", "ci", "--no-audit", "--no-fund", "--loglevel=error", cwd=home)
                (home / ".ready").touch()
    if NODE_MODULES.is_symlink() and NODE_MODULES.resolve() == (home / "node_modules").resolve():
        return
    if NODE_MODULES.is_symlink() or NODE_MODULES.is_file():
        NODE_MODULES.unlink()
    elif NODE_MODULES.exists():
        shutil.rmtree(NODE_MODULES)
    NODE_MODULES.symlink_to(home / "node_modules")


def build(force: bool = False) -> bool:
    """Build web/dist when an input changed; True when it did."""
    digest = _digest(_inputs())
    built = STAMP.exists() and all((WEB_DIST / name).exists() for name in BUILT)
    if not force and built and STAMP.read_text() == digest:
        return False
    _node_modules()
    codegen.vendor_google_protos()     # buf.yaml's google module
    _run("npm", "run", "--silent", "build", cwd=WEB)
    STAMP.write_text(digest)
    return True
