"""Where things live: the repository, generated code, and the one state directory."""
from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GEN = ROOT / "gen"
DESCRIPTOR_SET = GEN / "aimesh.binpb"
TRITON_MODELS = ROOT / "triton_models"
WEB = ROOT / "web"
WEB_DIST = WEB / "dist"            # the built page, served by Envoy's edge


def state_dir() -> Path:
    """All runtime state (data, logs, keys, rendered configs): survives down/up."""
    return Path(os.environ.get("AIMESH_STATE", ROOT / ".aimesh")).resolve()


def venv_bin(name: str) -> str:
    """A binary installed into the running virtualenv (envoy, nats-server, buf, grpcurl)."""
    return str(Path(sys.executable).parent / name)
