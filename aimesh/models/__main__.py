"""Runs one artifact builder, in the build environment: python -m aimesh.models MODULE OUT.

`aimesh models build` starts it (aimesh.models._run_builder); run by hand, it builds into OUT
without the cache, for debugging a builder."""
from __future__ import annotations

import importlib
import sys
from pathlib import Path

from aimesh.models import PROGRESS


def progress(message: str) -> None:
    print(PROGRESS + message, flush=True)


def main() -> None:
    module, out = sys.argv[1:]
    Path(out).mkdir(parents=True, exist_ok=True)
    importlib.import_module(module).build(Path(out), progress)


if __name__ == "__main__":
    main()
