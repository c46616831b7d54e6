"""The topology's stream retention, applied to the running NATS (`aimesh apply`); the services
apply the same limits when they start (kit.events.Events.ensure_streams)."""
from __future__ import annotations

from services.kit.events import Events

from .topology import Topology


async def apply(topo: Topology) -> list[str]:
    """Bring each stream's limits in line with the topology, in place; the streams changed."""
    bus = await Events.connect(f"nats://127.0.0.1:{topo.infra.nats_port}", "aimesh-apply")
    try:
        return await bus.ensure_streams(topo.retention.streams)
    finally:
        await bus.connection.close()
