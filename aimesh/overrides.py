"""What an operator changes at run time (`aimesh fault`, `aimesh canary`), kept apart from the
topology: one file in the state directory, applied on top of the topology by the Envoy renderer,
so `aimesh apply`, `up` and a restarted Envoy keep it. `down` keeps it too (`up` and `status`
print what is in force); `aimesh fault clear` and `aimesh canary abort` remove their parts."""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import yaml

from .topology import TRITON, Fault, Topology

FILE = "overrides.yaml"
LISTENERS = ("edge", "mesh")


@dataclass(frozen=True)
class Overrides:
    faults: tuple[Fault, ...] = ()
    weights: dict[str, dict[str, int]] = field(default_factory=dict)   # service -> version -> weight

    def on(self, topo: Topology) -> Topology:
        """The topology with these overrides applied: canary weights replaced, faults attached."""
        services = dict(topo.services)
        for name, weights in self.weights.items():
            if name in services:
                service = services[name]
                services[name] = dataclasses.replace(service, instances=tuple(
                    dataclasses.replace(i, weight=weights.get(i.version, i.weight))
                    for i in service.instances))
        return dataclasses.replace(topo, services=services, faults=self.faults)

    def with_fault(self, fault: Fault) -> Overrides:
        """One fault per target: a route carries one fault config, so a new one replaces the last."""
        kept = tuple(f for f in self.faults if f.target != fault.target)
        return dataclasses.replace(self, faults=(*kept, fault))

    def without_faults(self, target: str = "") -> Overrides:
        return dataclasses.replace(self, faults=tuple(f for f in self.faults if target and f.target != target))

    def with_weights(self, service: str, weights: dict[str, int]) -> Overrides:
        return dataclasses.replace(self, weights={**self.weights, service: dict(weights)})

    def without_weights(self, service: str) -> Overrides:
        return dataclasses.replace(self, weights={k: v for k, v in self.weights.items() if k != service})

    def lines(self) -> list[str]:
        """What is in force, one line each (for `aimesh status` and `up`)."""
        lines = [f"fault   {fault.describe()}" for fault in self.faults]
        lines += [f"weights {service}: " + ", ".join(f"{v} {w}%" for v, w in weights.items())
                  for service, weights in self.weights.items()]
        return lines


def path(state_dir: Path) -> Path:
    return Path(state_dir) / FILE


def load(state_dir: Path) -> Overrides:
    file = path(state_dir)
    if not file.exists():
        return Overrides()
    raw = yaml.safe_load(file.read_text()) or {}
    return Overrides(faults=tuple(Fault(**f) for f in raw.get("faults", ())),
                     weights={s: {v: int(w) for v, w in ws.items()} for s, ws in raw.get("weights", {}).items()})


def save(state_dir: Path, overrides: Overrides) -> None:
    """Written beside, then renamed over: a reader never sees half a file."""
    file = path(state_dir)
    file.parent.mkdir(parents=True, exist_ok=True)
    partial = file.with_name(f".{file.name}.partial")
    partial.write_text(yaml.safe_dump({
        "faults": [{k: v for k, v in dataclasses.asdict(f).items() if v} for f in overrides.faults],
        "weights": overrides.weights}, sort_keys=False))
    os.replace(partial, file)


def change(state_dir: Path, topo: Topology, edit) -> Overrides:
    """Save edit(the overrides in force) and apply them to a running gateway's routes, live.
    Before the mesh's first `up` they are only saved: `up` renders them."""
    from . import envoy
    changed = edit(load(state_dir))
    save(state_dir, changed)
    if (Path(state_dir) / "envoy" / "envoy.yaml").exists() and not envoy.apply_routes(topo, state_dir):
        raise RuntimeError("the gateway's listeners or clusters differ from the topology's: "
                           "`aimesh down` and `aimesh up` first")
    return changed


def fault(topo: Topology, target: str, *, delay_s: float = 0.0, abort: str = "", percent: float = 100.0,
          listener: str = "", caller: str = "", version: str = "", model: str = "") -> Fault:
    """A fault checked against the topology; ValueError names what is wrong."""
    if target != TRITON and target not in topo.services:
        raise ValueError(f"no service {target!r}: give one of {', '.join([*topo.services, TRITON])}")
    if not delay_s and not abort:
        raise ValueError("give --delay and/or --abort")
    if delay_s < 0:
        raise ValueError("--delay must not be negative")
    if abort and (abort not in grpc.StatusCode.__members__ or abort == "OK"):
        raise ValueError(f"--abort is a gRPC status name other than OK (e.g. UNAVAILABLE), not {abort!r}")
    if not 0 < percent <= 100:
        raise ValueError(f"--percent is in (0, 100], not {percent:g}")
    if listener and listener not in LISTENERS:
        raise ValueError(f"--listener is edge or mesh, not {listener!r}")
    if target == TRITON or caller:   # Triton is reached east-west only; callers are workloads there
        if listener == "edge":
            raise ValueError("Triton and --caller are east-west only: --listener mesh")
        listener = "mesh"
    if caller and caller not in topo.identity.calls:
        raise ValueError(f"no caller {caller!r}: give one of {', '.join(topo.identity.calls)}")
    if version:
        versions = [] if target == TRITON else [i.version for i in topo.services[target].instances if i.version]
        if version not in versions:
            raise ValueError(f"{target} has no version {version!r}" + (
                f" (its versions: {', '.join(versions)})" if versions else ""))
    if model and target != TRITON:
        raise ValueError("--model is for triton")
    return Fault(target=target, delay_s=delay_s, abort=abort, percent=percent, listener=listener,
                 caller=caller, version=version, model=model)


def weights(topo: Topology, service: str, canary: str, percent: int) -> dict[str, int]:
    """Weights sending `percent` of a canary service's calls to version `canary`, the rest to the
    other versions in the topology's proportions (or evenly where those are all 0)."""
    versions = [i for i in topo.services[service].instances if i.version and i.version != canary]
    total = sum(i.weight for i in versions)
    rest = 100 - percent
    shares = {i.version: (rest * i.weight // total if total else rest // len(versions)) for i in versions}
    if versions:
        shares[versions[0].version] += rest - sum(shares.values())   # whole percents that add up to 100
    return {**shares, canary: percent}


def grpc_status_code(name: str) -> int:
    return grpc.StatusCode[name].value[0]


__all__ = ["FILE", "Overrides", "fault", "grpc_status_code", "load", "path", "save", "weights"]
