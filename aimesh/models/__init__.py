"""Model artifacts for Triton, built offline from weights and data that ship in packages.

Each artifact is built by a function `build(out: Path, progress)` that writes files into `out`,
run in the build environment (requirements-build.txt: torch and friends, never needed to serve).
Outputs are cached outside the clone under ~/.cache/aimesh/models/<name>-<key>, where the key
hashes the builder's sources and the versions of the packages it reads, so a warm machine skips
the build and a fresh one still makes it. Builds are deterministic (fixed seeds)."""
from __future__ import annotations

import hashlib
import importlib.metadata
import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Artifact:
    name: str                       # the Triton model it serves, e.g. "text_embedding"
    module: str                     # "aimesh.models.text_embedding": has build(out, progress)
    sources: tuple[str, ...]        # repo-relative files whose content keys the cache
    packages: tuple[str, ...] = ()  # distributions whose versions key the cache


ARTIFACTS: list[Artifact] = []      # filled in by the builders' registrations below


def cache_root() -> Path:
    return Path(os.environ.get("AIMESH_CACHE", Path.home() / ".cache" / "aimesh")) / "models"


def key(artifact: Artifact, root: Path) -> str:
    digest = hashlib.sha256(artifact.module.encode())
    for source in sorted(artifact.sources):
        digest.update(source.encode())
        digest.update((root / source).read_bytes())
    for package in sorted(artifact.packages):
        try:
            digest.update(f"{package}=={importlib.metadata.version(package)}".encode())
        except importlib.metadata.PackageNotFoundError:
            digest.update(f"{package}==?".encode())
    return digest.hexdigest()[:16]
