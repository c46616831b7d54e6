"""The content saga end to end through the gateway: sagas per minute with 1 and 8 running at
once (create, then watch until final: check the prompt, write ~200 tokens with chat_lm, check the
text, index, publish), and how long a saga whose instance died waits before the other instance
resumes it (a crash point after the generate step: from the step's end to the next step's start).

Prints figures and asserts none. Its own mesh with demo data in /tmp/aimesh-bench-saga-state on
AIMESH_PORT_OFFSET=2000 (override with those two variables), bench/topology.yaml (no per-user cap
or rate limit on content); wipes that state dir first, always brings the mesh down.

  bin/aimesh bench saga [--sagas 16]
"""
from __future__ import annotations

import argparse
import collections
import concurrent.futures
import shutil
import statistics
import time

import grpc
from helpers.common import machine

from aimesh import demo, services
from aimesh.content.v1 import content_pb2 as C
from aimesh.content.v1 import content_pb2_grpc
from aimesh.harness import MeshUnderTest
from aimesh.supervisor import Supervisor

STATE = "/tmp/aimesh-bench-saga-state"
PROMPTS = ["a film about toys that come alive", "a heist in a casino", "a road trip across the desert",
           "a detective in a rainy city", "a robot who learns to paint", "a summer camp mystery"]


def one(stub, token: str, prompt: str) -> tuple[float, C.Content]:
    """Create and watch until final: (seconds, the final content)."""
    metadata = (("authorization", f"Bearer {token}"),)
    started = time.perf_counter()
    created = stub.CreateContent(C.CreateContentRequest(prompt=prompt, kind=C.CONTENT_KIND_BLURB),
                                 metadata=metadata, timeout=10).content
    for update in stub.WatchContent(C.WatchContentRequest(content_id=created.content_id),
                                    metadata=metadata, timeout=600):
        content = update.content
    return time.perf_counter() - started, content


def rate(stub, token: str, at_once: int, sagas: int) -> None:
    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(at_once) as pool:
        done = list(pool.map(lambda n: one(stub, token, PROMPTS[n % len(PROMPTS)] + f" ({n})"), range(sagas)))
    elapsed = time.perf_counter() - started
    seconds = sorted(s for s, _ in done)
    ended = [C.ContentState.Name(c.state).removeprefix("CONTENT_STATE_") for _, c in done]
    generate = [s.end_time.ToMicroseconds() - s.start_time.ToMicroseconds()
                for _, c in done for s in c.steps if s.name == "generate"]
    print(f"{at_once:>4} at once | {sagas:>3} sagas | {sagas / elapsed * 60:6.1f} sagas/min | "
          f"saga p50 {statistics.median(seconds):5.1f} s, max {seconds[-1]:5.1f} s | "
          f"generate step p50 {statistics.median(generate) / 1e6:4.1f} s | ended {dict(collections.Counter(ended))}")


def resume(mesh: MeshUnderTest, stub, token: str) -> None:
    points = services.crash_points(mesh.state)
    points.write_text("content:after:generate\n")
    seconds, content = one(stub, token, "a lighthouse keeper and a storm")
    steps = {s.name: s for s in content.steps}
    waited = (steps["check_text"].start_time.ToMicroseconds() - steps["generate"].end_time.ToMicroseconds()) / 1e6
    print(f"resume after a crash after 'generate': the next step started {waited:.1f} s after the crash "
          f"(lease {mesh.topo.services['content'].saga.get('lease')}), by {steps['check_text'].instance} "
          f"(generate ran on {steps['generate'].instance}); the saga took {seconds:.1f} s, ended "
          f"{C.ContentState.Name(content.state)}")
    for name in ("content-1", "content-2"):
        if Supervisor(mesh.state).pid(name) is None:
            mesh.run("start", name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sagas", type=int, default=16, help="sagas in the 8-at-once row")
    args = parser.parse_args()
    mesh = MeshUnderTest.for_bench(state=STATE)
    shutil.rmtree(mesh.state, ignore_errors=True)
    print(f"machine: {machine()}")
    try:
        mesh.up(demo_data=True)
        token = demo.login(mesh.gateway, "bob@demo.aimesh")
        with grpc.insecure_channel(mesh.gateway) as channel:
            stub = content_pb2_grpc.ContentServiceStub(channel)
            one(stub, token, "warm-up: a film about a dog")
            rate(stub, token, 1, max(args.sagas // 4, 3))
            rate(stub, token, 8, args.sagas)
            resume(mesh, stub, token)
    finally:
        mesh.down_and_report()


if __name__ == "__main__":
    main()
