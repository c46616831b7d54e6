"""The model build framework: content keys, what counts as built, build order, the build run
(a real subprocess; only the build virtualenv is swapped for this interpreter: no torch needed)."""
import dataclasses
import sys
from pathlib import Path

import pytest

from aimesh import models
from aimesh.paths import ROOT, TRITON_MODELS

TINY = models.Artifact("tiny", "tests.unit.runner.tiny_artifact")


@pytest.fixture
def registry(monkeypatch, tmp_path):
    """An empty cache and a registry of the tiny artifact; builds run in this interpreter."""
    monkeypatch.setenv("AIMESH_CACHE", str(tmp_path))
    monkeypatch.setattr(models, "ARTIFACTS", [TINY])
    monkeypatch.setattr(models, "build_python", lambda: Path(sys.executable))
    return models.ARTIFACTS


def test_every_registered_artifact_has_its_builder_its_triton_model_and_its_pins():
    for artifact in models.ARTIFACTS:
        assert (ROOT / artifact.module.replace(".", "/")).with_suffix(".py").is_file()
        assert (TRITON_MODELS / artifact.name / "config.pbtxt").is_file()
        assert len(models.key(artifact)) == 16      # raises if a package is not pinned


def test_the_key_follows_sources_pins_and_needs_but_not_other_pins(registry):
    base = models.key(TINY)
    assert models.key(TINY) == base
    assert models.key(dataclasses.replace(TINY, sources=("requirements.txt",))) != base
    with_torch = dataclasses.replace(TINY, packages=("torch",))
    assert models.key(with_torch) != base
    assert models.pins(("torch",)) == [line for line in
                                       (ROOT / "requirements-build.txt").read_text().splitlines()
                                       if line.startswith("torch==")]
    registry.append(models.Artifact("upstream", "tests.unit.runner.tiny_artifact",
                                    sources=("requirements.txt",)))
    assert models.key(dataclasses.replace(TINY, needs=("upstream",))) != base


def test_an_unpinned_package_is_named(registry):
    with pytest.raises(models.BuildFailed, match="not-a-pinned-package"):
        models.key(dataclasses.replace(TINY, packages=("not-a-pinned-package",)))


def test_needs_are_built_first_and_cycles_are_refused(registry):
    registry[:] = [dataclasses.replace(TINY, needs=("base",)),
                   models.Artifact("base", TINY.module)]
    assert [a.name for a in models.in_build_order(["tiny"])] == ["base", "tiny"]
    registry[1] = models.Artifact("base", TINY.module, needs=("tiny",))
    with pytest.raises(models.BuildFailed, match="need each other"):
        models.in_build_order(["tiny"])


def test_a_build_writes_the_files_and_a_manifest_and_reports_progress(registry):
    lines = []
    [folder] = models.build(progress=lines.append)
    assert folder == models.output("tiny") and folder.name == f"tiny-{models.key(TINY)}"
    assert (folder / "weights.bin").stat().st_size == 1024
    assert (folder / "nested" / "vocab.txt").read_text() == "a\nb\n"
    assert models.is_current("tiny")
    assert "[1/1] tiny: writing the weights" in lines
    assert not any("chatter" in line for line in lines)       # only progress lines are shown
    assert [p.name for p in folder.parent.iterdir() if "partial" in p.name] == []


def test_a_current_artifact_is_skipped_and_force_rebuilds_it(registry):
    models.build(progress=lambda _: None)
    lines = []
    models.build(progress=lines.append)
    assert lines == [f"[1/1] tiny: current ({models.output('tiny')})"]
    lines.clear()
    models.build(["tiny"], force=True, progress=lines.append)
    assert "[1/1] tiny: writing the weights" in lines


def test_a_damaged_artifact_is_not_current(registry):
    folder = models.build(progress=lambda _: None)[0]
    with open(folder / "weights.bin", "r+b") as weights:
        weights.truncate(10)
    assert not models.is_current("tiny")


def test_a_failed_build_leaves_nothing_that_counts(registry, monkeypatch):
    monkeypatch.setenv("TINY_ARTIFACT_FAILS", "1")
    with pytest.raises(models.BuildFailed) as failure:
        models.build(progress=lambda _: None)
    assert "failed on request" in str(failure.value)       # the builder's own words
    assert not models.is_current("tiny")
    assert not [p for p in models.cache_root().iterdir() if p.name.startswith(("tiny", ".tiny-"))]
