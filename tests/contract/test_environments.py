"""The environment bin/venv built, and these tests run in, holds no wheel compiled on this machine.

A wheel built here from an sdist with native code carries the bare platform tag `linux_x86_64`;
PyPI's prebuilt ones carry `manylinux…` (or `musllinux…`). Pure-Python sdists (marked `# source:`
in the requirements) build to `py3-none-any`, with no compiler: bin/venv sets CC/CXX to `false`."""
from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path

from aimesh import paths


def marked_source() -> set[str]:
    """Packages the requirements allow from an sdist (pure Python, built with no compiler)."""
    return {re.split(r"[=<>~!]", line)[0].strip().lower()
            for name in ("requirements.txt", "requirements-nodeps.txt")
            for line in (paths.ROOT / name).read_text().splitlines()
            if re.match(r"[A-Za-z0-9].*# source:", line)}


def wheel_tags(distribution: metadata.Distribution) -> list[str]:
    wheel = distribution.read_text("WHEEL") or ""
    return [line.split(":", 1)[1].strip() for line in wheel.splitlines() if line.startswith("Tag:")]


def test_runtime_environment_holds_no_locally_compiled_wheel():
    here = [d for d in metadata.distributions()
            if Path(d.locate_file("")).resolve().is_relative_to(Path(sys.prefix).resolve())]
    assert any(d.metadata["Name"] == "xllamacpp" for d in here)   # the chat engine, from a wheel
    compiled_here = {d.metadata["Name"]: tags for d in here
                     if (tags := wheel_tags(d)) and all(t.endswith("-linux_x86_64") for t in tags)
                     and d.metadata["Name"].lower() not in marked_source()}
    assert compiled_here == {}
