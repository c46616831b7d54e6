"""What JetStream keeps in memory as a stream grows: NATS's resident memory (all of it, and the
anonymous part: Go's heap) every MiB published into one stream configured as the mesh's busiest
(USERS: the topology's limits, file storage), up to several of its blocks.

Why: in the soak NATS grows in steps long after every other component is flat. nats-server caches
the block a stream is appending to (its write cache: every message since the block began, while
the stream is written to at least every 10 s), in buffers of 256 KiB, 1, 4 and 8 MiB; a stream with
the mesh's max_bytes has 8 MiB blocks, and at the soak's rate a block fills in hours. So the growth
should stop once a block is full and the next one reuses its buffer: this shows where.

Prints figures, asserts none. Starts its own nats-server (the mesh's configuration, plaintext, on
loopback, AIMESH_PORT_OFFSET=2000's ports + 7) in a scratch directory and stops it.

  bin/aimesh bench nats_memory [--mib 40] [--message-bytes 400]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
from helpers.common import machine

from aimesh import paths, topology
from aimesh.component import http_ok
from aimesh.infra import nats_config
from services.kit.events import Events

STREAM, SUBJECT = "USERS", "user.purchased"
PORT_SHIFT = 7     # clear of a bench mesh on the same offset
IN_FLIGHT = 256    # publishes awaiting their acks at once


def rss_mib(process: psutil.Process) -> tuple[float, float]:
    with open(f"/proc/{process.pid}/status") as status:
        anon = next(int(line.split()[1]) for line in status if line.startswith("RssAnon:"))
    return process.memory_info().rss / 2**20, anon / 2**10


async def publish(url: str, limits, mib: int, size: int, server: psutil.Process) -> None:
    events = await Events.connect(url, "nats-memory", {STREAM: limits})
    info = await events.jetstream.stream_info(STREAM)
    print(f"stream {STREAM}: max_bytes {info.config.max_bytes / 2**20:.0f} MiB, "
          f"{size}-byte messages\n\n{'MiB published':>14} {'RSS MiB':>8} {'anon MiB':>9} {'msgs/s':>7}")
    body, per_mib = b"x" * size, 2**20 // size
    rss, anon = rss_mib(server)
    print(f"{0:14d} {rss:8.1f} {anon:9.1f}")
    for step in range(1, mib + 1):
        started = time.monotonic()
        for first in range(0, per_mib, IN_FLIGHT):
            await asyncio.gather(*(events.jetstream.publish(SUBJECT, body)
                                   for _ in range(min(IN_FLIGHT, per_mib - first))))
        rate = per_mib / (time.monotonic() - started)
        rss, anon = rss_mib(server)
        print(f"{step:14d} {rss:8.1f} {anon:9.1f} {rate:7.0f}", flush=True)
    await events.connection.close()


def main() -> int:
    parser = argparse.ArgumentParser(prog="aimesh bench nats_memory")
    parser.add_argument("--mib", type=int, default=40, help="MiB to publish into the stream")
    parser.add_argument("--message-bytes", type=int, default=400, help="about a purchase event's size")
    args = parser.parse_args()
    topo = topology.load(paths.ROOT / "bench" / "topology.yaml", port_offset=2000 + PORT_SHIFT)
    limits = topo.retention.streams[STREAM]
    print(f"aimesh nats memory: {machine()}")
    store = Path(tempfile.mkdtemp(prefix="aimesh-nats-memory-"))
    config = store / "nats.json"
    config.write_text(json.dumps(nats_config(topo, str(store), None)))
    process = subprocess.Popen([str(paths.venv_bin("nats-server")), "-c", str(config)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        monitor = f"http://127.0.0.1:{topo.infra.nats_monitor_port}/healthz?js-enabled-only=true"
        deadline = time.monotonic() + 20
        while not http_ok(monitor):
            if time.monotonic() > deadline or process.poll() is not None:
                print("nats-server did not become healthy", file=sys.stderr)
                return 1
            time.sleep(0.1)
        asyncio.run(publish(f"nats://127.0.0.1:{topo.infra.nats_port}", limits, args.mib,
                            args.message_bytes, psutil.Process(process.pid)))
    finally:
        process.terminate()
        process.wait(timeout=15)
        shutil.rmtree(store, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
