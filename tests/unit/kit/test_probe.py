"""The container health check (`python -m services.kit.probe PORT`): exit 0 only while the
server on that port says SERVING."""
import asyncio
import os
import socket
import sys

from aimesh.paths import ROOT


async def _probe(port: int) -> int:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.kit.probe", str(port), cwd=ROOT,
        env={**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'gen' / 'python'}"})
    return await asyncio.wait_for(process.wait(), 30)


async def test_probe_passes_while_serving_and_fails_once_draining(users):
    served = await users()
    assert await _probe(served.server.port) == 0
    await served.server.health.enter_graceful_shutdown()     # what SIGTERM does first
    assert await _probe(served.server.port) == 1


async def test_probe_fails_when_nothing_listens():
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    assert await _probe(port) == 1
