"""Triton models' model.py loaded outside Triton, for tests of their engines."""
from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

from aimesh import paths


def _model(name: str) -> types.ModuleType:
    """triton_models/<name>/1/model.py. It imports Triton's triton_python_backend_utils, which
    exists only inside Triton; what the tests call never uses it, so a stand-in lets it load. Its
    folder goes on the path, as Triton puts it, for the modules beside it."""
    stand_in = sys.modules.setdefault("triton_python_backend_utils", types.ModuleType("triton_python_backend_utils"))
    stand_in.TRITONSERVER_RESPONSE_COMPLETE_FINAL = 1   # type: ignore[attr-defined]
    folder = paths.TRITON_MODELS / name / "1"
    if str(folder) not in sys.path:
        sys.path.append(str(folder))
    spec = importlib.util.spec_from_file_location(f"served_{name}", folder / "model.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module     # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def text_embedding(artifact: Path) -> types.ModuleType:
    """text_embedding's model.py, reading its files from `artifact`."""
    module = _model("text_embedding")
    module.ARTIFACT = artifact
    return module


def chat_lm() -> types.ModuleType:
    return _model("chat_lm")
