"""A Triton of its own for a benchmark: serving one model, in a temporary state dir, stopped after."""
from __future__ import annotations

import contextlib
import dataclasses
import tempfile
from collections.abc import Iterator
from pathlib import Path

import tritonclient.grpc as grpcclient

from aimesh import triton
from aimesh.supervisor import Supervisor
from aimesh.topology import Infra


@contextlib.contextmanager
def serving(model: str | tuple[str, ...], infra: Infra, repository: Path | None = None,
            log: list[Path] | None = None, flags: tuple[str, ...] = ()) -> Iterator[grpcclient.InferenceServerClient]:
    """Triton serving one model (or several), from the project's repository or `repository`,
    with `flags` added to its command line. `log`, if given, gets the path of Triton's log (gone
    when this ends)."""
    models = (model,) if isinstance(model, str) else model
    with tempfile.TemporaryDirectory(prefix=f"aimesh-bench-{models[0]}-") as state:
        supervisor = Supervisor(Path(state))
        if log is not None:
            log.append(supervisor.log_path("triton"))
        component = triton.component(infra, Path(state), models=models, repository=repository)
        component = dataclasses.replace(component, argv=[*component.argv, *flags])
        supervisor.start(component)
        try:
            supervisor.wait_healthy([component])
            with grpcclient.InferenceServerClient(f"127.0.0.1:{infra.triton_grpc_port}") as client:
                yield client
        finally:
            supervisor.stop(component.name)
