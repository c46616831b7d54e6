"""Model hot-swap: `aimesh models swap recommender --from 1 --to 3`, while the mesh serves.

1. Triton's explicit model control loads version 3 beside the served ones (a reload with the
   version policy widened: the versions already served keep serving until it is done).
2. A warm-up request checks it answers as its build evaluated it (the artifact's samples).
3. The swap is written to the state dir's model-versions file: every instance asking for
   version 1 now gets 3 (kit.inference.ModelVersions reads it live, within CHECK_EVERY_S).
4. Once no instance can still be about to ask for 1 (that, plus a model deadline), version 1
   is unloaded; Triton lets calls in flight on it finish first.
A failed load or warm-up unloads the new version again and changes nothing else. Triton started
later (`up`, `start triton`) serves the swapped versions: `assemble` reads the same file."""
from __future__ import annotations

import json
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import yaml

from services.kit.inference import ModelVersions

from . import models as artifacts
from . import triton
from .topology import Topology

FILE = "model-versions.yaml"
CALL_DEADLINE_S = 1.0    # the longest deadline a caller of a swappable model sets (recommend's)
SWITCH_WAIT_S = 2 * ModelVersions.CHECK_EVERY_S + CALL_DEADLINE_S
TIMEOUT_S = 120          # a load (Triton starts the version's stub processes)


class SwapFailed(RuntimeError):
    pass


def path(state_dir: Path) -> Path:
    return Path(state_dir) / FILE


def swaps(state_dir: Path) -> dict[str, dict[str, str]]:
    """model -> {version asked: version served}."""
    file = path(state_dir)
    raw = yaml.safe_load(file.read_text()) if file.exists() else None
    return {str(m): {str(a): str(b) for a, b in v.items()} for m, v in (raw or {}).items()}


def remapped(current: dict[str, dict[str, str]], model: str, old: str, new: str) -> dict[str, dict[str, str]]:
    """Whoever got `old` gets `new`: asking for old itself, or for a version swapped to old."""
    versions = dict(current.get(model, {}))
    versions[old] = new
    versions = {asked: (new if served == old else served) for asked, served in versions.items()}
    versions = {asked: served for asked, served in versions.items() if asked != served}
    return {**{m: v for m, v in current.items() if m != model}, **({model: versions} if versions else {})}


def _save(state_dir: Path, content: dict[str, dict[str, str]]) -> None:
    file = path(state_dir)
    partial = file.with_name(f".{file.name}.partial")
    partial.write_text(yaml.safe_dump(content))
    os.replace(partial, file)    # a new inode: readers see the whole file, and see it changed


POLICY = re.compile(r"version_policy:\s*\{\s*specific\s*\{\s*versions:\s*\[([\d,\s]*)\]\s*\}\s*\}")


def served_policy(config: str, model_swaps: dict[str, str]) -> str:
    """A config.pbtxt whose `specific` version policy serves the swapped-in versions in place of
    the swapped-out ones (what Triton must load when it starts after a swap)."""
    match = POLICY.search(config)
    if not model_swaps or match is None:
        return config
    declared = [v.strip() for v in match.group(1).split(",") if v.strip()]
    served = sorted({model_swaps.get(v, v) for v in declared}, key=int)
    return config[:match.start()] + f"version_policy: {{ specific {{ versions: [{', '.join(served)}] }} }}" \
        + config[match.end():]


class Admin:
    """Triton's HTTP API as the operator (the admin key for loads and unloads)."""

    def __init__(self, topo: Topology, state_dir: Path):
        self.base = f"http://127.0.0.1:{topo.infra.triton_http_port}"
        self.headers = {"content-type": "application/json", **triton.admin_headers(state_dir)}

    def _call(self, method: str, route: str, body: dict | None = None, timeout_s: float = 10) -> dict:
        request = urllib.request.Request(f"{self.base}/{route}", method=method, headers=self.headers,
                                         data=None if body is None else json.dumps(body).encode())
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                text = response.read().decode()
        except urllib.error.HTTPError as refused:
            raise SwapFailed(f"Triton refused {route}: {refused.read().decode() or refused}") from None
        except OSError as down:
            raise SwapFailed(f"Triton is not answering at {self.base}: {down}") from None
        return json.loads(text) if text else {}

    def served(self, model: str) -> set[str]:
        index = self._call("POST", "v2/repository/index", {"ready": True})
        return {entry["version"] for entry in index if entry["name"] == model and entry.get("version")}

    def serve(self, model: str, versions: set[str]) -> None:
        """Reload `model` serving exactly `versions` (the served ones keep serving meanwhile)."""
        config = self._call("GET", f"v2/models/{model}/config")
        config["version_policy"] = {"specific": {"versions": sorted(versions, key=int)}}
        self._call("POST", f"v2/repository/models/{model}/load",
                   {"parameters": {"config": json.dumps(config)}}, timeout_s=TIMEOUT_S)

    def infer(self, model: str, version: str, inputs: list[dict]) -> dict[str, list]:
        reply = self._call("POST", f"v2/models/{model}/versions/{version}/infer", {"inputs": inputs})
        return {output["name"]: output["data"] for output in reply["outputs"]}


def _recommender_answers_as_built(admin: Admin, version: str) -> None:
    samples = json.loads((artifacts.output("recommender") / "samples.json").read_text()).get(version)
    if not samples:
        raise SwapFailed(f"the recommender artifact has no samples for version {version}")
    for sample in samples[:3]:
        history = sample["history"]
        answer = admin.infer("recommender", version, [
            {"name": "HISTORY", "shape": [len(history)], "datatype": "INT64", "data": history},
            {"name": "K", "shape": [1], "datatype": "INT32", "data": [len(sample["top_10"])]}])
        if answer["ITEM_IDS"] != sample["top_10"]:
            raise SwapFailed(f"recommender {version} answered {answer['ITEM_IDS'][:5]}..., "
                             f"its build evaluated {sample['top_10'][:5]}...")


# model -> a check that a freshly loaded version answers as it should
WARM_UPS: dict[str, Callable[[Admin, str], None]] = {"recommender": _recommender_answers_as_built}


def swap(topo: Topology, state_dir: Path, model: str, old: str, new: str,
         progress: Callable[[str], None] = print) -> None:
    if model not in WARM_UPS:
        raise SwapFailed(f"no warm-up check for {model!r}: swappable models are {', '.join(WARM_UPS)}")
    if not (Path(state_dir) / "triton" / "models" / model / new).is_dir():
        raise SwapFailed(f"{model} has no version {new} in Triton's repository (triton_models/{model}/{new})")
    admin = Admin(topo, state_dir)
    served = admin.served(model)
    if old not in served:
        raise SwapFailed(f"{model} version {old} is not served (served: {', '.join(sorted(served))})")
    started = time.monotonic()
    if new not in served:
        admin.serve(model, served | {new})
        progress(f"loaded {model} version {new} beside {', '.join(sorted(served))} "
                 f"({time.monotonic() - started:.1f} s)")
    try:
        WARM_UPS[model](admin, new)
    except SwapFailed:
        if new not in served:
            admin.serve(model, served)
        raise
    progress(f"warm-up: version {new} answers as its build evaluated it")
    _save(state_dir, remapped(swaps(state_dir), model, old, new))
    progress(f"callers asking for version {old} get {new} now; waiting {SWITCH_WAIT_S:g} s for calls "
             f"to version {old} to finish")
    time.sleep(SWITCH_WAIT_S)   # a bound from the callers' own re-read period and deadline
    admin.serve(model, (served | {new}) - {old})
    progress(f"unloaded {model} version {old}; serving {', '.join(sorted(admin.served(model)))} "
             f"({time.monotonic() - started:.1f} s in all)")


def cmd_models_swap(args) -> int:
    import sys

    from . import paths, topology
    try:
        swap(topology.load(), paths.state_dir(), args.model, args.old, args.new,
             progress=lambda line: print(f"  {line}", flush=True))
    except SwapFailed as failure:
        print(f"aimesh: {failure}", file=sys.stderr)
        return 1
    return 0
