"""The topology's stream retention, applied to the running NATS (`aimesh apply`); the services
apply the same limits when they start (kit.events.Events.ensure_streams)."""
from __future__ import annotations

from pathlib import Path

from . import infra
from .topology import Topology


async def apply(topo: Topology, state_dir: Path) -> list[str]:
    """Bring each stream's limits in line with the topology, in place; the streams changed."""
    bus = await infra.events(topo, state_dir, "aimesh-apply")
    try:
        return await bus.ensure_streams(topo.retention.streams)
    finally:
        await bus.connection.close()
