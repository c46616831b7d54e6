"""Triton models' model.py loaded outside Triton, for tests of their engines."""
from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

from aimesh import paths


def text_embedding(artifact: Path) -> types.ModuleType:
    """triton_models/text_embedding/1/model.py, reading its files from `artifact`. It imports
    Triton's triton_python_backend_utils, which exists only inside Triton; the engines never use
    it, so an empty stand-in lets it load."""
    sys.modules.setdefault("triton_python_backend_utils", types.ModuleType("triton_python_backend_utils"))
    path = paths.TRITON_MODELS / "text_embedding" / "1" / "model.py"
    spec = importlib.util.spec_from_file_location("served_text_embedding", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.ARTIFACT = artifact
    return module
