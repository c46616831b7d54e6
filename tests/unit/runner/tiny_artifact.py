"""A tiny artifact builder for the build framework's tests: writes two files, or fails on request."""
import os
from pathlib import Path


def build(out: Path, progress) -> None:
    progress("writing the weights")
    (out / "weights.bin").write_bytes(bytes(range(256)) * 4)
    (out / "nested").mkdir()
    (out / "nested" / "vocab.txt").write_text("a\nb\n")
    print("library chatter that is not progress")
    if os.environ.get("TINY_ARTIFACT_FAILS"):
        raise SystemExit("the tiny builder failed on request")
