"""The images' recipes (services/Dockerfile, deploy/triton/Dockerfile) and their hash-pinned
requirements: in step with the runtime, slim, non-root, and every install hash-checked. Checked
offline: no image is built here."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from aimesh import deploy, paths

ROOT = paths.ROOT


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?==([^\s\\;]+)", line)
        if match:
            pins[match.group(1).lower().replace("_", "-")] = match.group(2)
    return pins


@pytest.mark.parametrize("name", deploy.lock_inputs())
def test_image_locks_pin_what_their_inputs_ask_with_hashes(name):
    lock = ROOT / "deploy" / "requirements" / f"{name}.txt"
    wanted, locked = _pins(deploy.lock_inputs()[name]), _pins(lock)
    # A local version label is the build the lock found: torch 2.13.0 as 2.13.0+cpu.
    assert {p: v for p, v in wanted.items() if locked.get(p, "").split("+")[0] != v} == {}, \
        f"run `bin/aimesh deploy lock {name}`"
    entries = re.split(r"\n(?=[A-Za-z])", lock.read_text())
    assert all("--hash=sha256:" in e for e in entries if "==" in e)


def test_image_inputs_use_the_runtimes_versions():
    runtime = _pins(ROOT / "requirements.txt")
    for name in deploy.LOCKS:
        for package, version in _pins(ROOT / "deploy" / "requirements" / f"{name}.in").items():
            if package in runtime:
                assert version == runtime[package], f"{name}.in pins {package}=={version}"
    assert _pins(ROOT / "deploy/requirements/data.txt") == _pins(ROOT / deploy.DATA_PACKAGES)


def test_service_image_is_slim_non_root_and_hash_pinned():
    recipe = (ROOT / "services" / "Dockerfile").read_text()
    assert "python:3.11-slim" in recipe
    assert re.search(r"^USER 10001$", recipe, re.M)
    installs = re.findall(r"pip install[^\n]*", recipe)
    assert installs and all("--require-hashes" in i for i in installs)
    assert "python -m aimesh gen" in recipe


def test_triton_image_builds_on_the_official_server_with_the_models_the_runner_loads(compose):
    recipe = (ROOT / "deploy" / "triton" / "Dockerfile").read_text()
    assert "nvcr.io/nvidia/tritonserver:" in recipe
    assert "triton.assemble(Path('/assembled'), image=True)" in recipe and "models.build()" in recipe
    from aimesh import triton
    loaded = [a.split("=", 1)[1] for a in compose["services"]["triton"]["command"]
              if a.startswith("--load-model=")]
    assert loaded == list(triton.folders(image=True))     # text_embedding's ensemble and its steps
    assert set(triton.MODELS) <= set(loaded)
    assert compose["services"]["triton"]["deploy"]["resources"]["reservations"]["devices"] == \
        [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]


def test_triton_image_installs_only_hash_checked_requirements():
    recipe = (ROOT / "deploy" / "triton" / "Dockerfile").read_text()
    commands = recipe.replace("\\\n", " ").replace("&&", "\n").splitlines()
    installs = [c for c in commands if re.search(r"pip (install|wheel) ", c)]
    unchecked = [i for i in installs if "--require-hashes" not in i]
    assert installs and unchecked == []
    assert "-r /tmp/build.txt" in recipe                    # the model build's lock, not its input
    assert "requirements-build.txt" not in " ".join(installs)


def test_triton_image_build_stage_has_every_file_the_model_builders_read():
    from aimesh import models
    recipe = (ROOT / "deploy" / "triton" / "Dockerfile").read_text()
    copied = [source for c in re.findall(r"^COPY (?!--from)[^\n]*", recipe, re.M)
              for source in c.split()[1:-1] if not source.startswith("--")]
    for artifact in models.ARTIFACTS:
        for source in (artifact.module.replace(".", "/") + ".py", *artifact.sources,
                       *models.BUILD_REQUIREMENTS):
            assert any(source == c or source.startswith(c.rstrip("/") + "/") for c in copied), source


