"""The long fuzzing run: hypothesis-generated hostile requests (bench/helpers/fuzz.py) to every
RPC on each service's own port, as the gateway sends them; prints the status codes per RPC, and
fails at the first INTERNAL/UNKNOWN or field-less INVALID_ARGUMENT (the smallest such request,
saved under tests/chaos/fuzz-examples, is tried first by every later run and by the tests).

Runs its own mesh with demo data (/tmp/aimesh-bench-fuzz-state on AIMESH_PORT_OFFSET=2000) and
brings it down; checks no process died or restarted.

  bin/aimesh bench fuzz [--examples N] [--only SUBSTRING]
"""
from __future__ import annotations

import argparse
import collections
import shutil
import sys
import time

from helpers import fuzz
from helpers.common import machine

from aimesh.harness import MeshUnderTest


def main() -> int:
    parser = argparse.ArgumentParser(prog="aimesh bench fuzz")
    parser.add_argument("--examples", type=int, default=10_000, help="requests per RPC")
    parser.add_argument("--only", default="", help="only RPCs whose path contains this")
    args = parser.parse_args()
    mesh = MeshUnderTest.for_bench(state="/tmp/aimesh-bench-fuzz-state")
    print(f"aimesh fuzz: {args.examples} requests per RPC\nmachine: {machine()}")
    shutil.rmtree(mesh.state, ignore_errors=True)
    outcomes: collections.Counter = collections.Counter()
    failed = False
    try:
        print(f"mesh up with demo data in {mesh.up(demo_data=True):.1f} s")
        before = mesh.pids()
        for rpc in fuzz.rpcs(mesh.topo):
            if args.only not in rpc.path:
                continue
            started = time.monotonic()
            with mesh.direct(fuzz.instance_of(mesh.topo, rpc.service), rpc.service) as channel:
                try:
                    fuzz.fuzz(rpc, channel, args.examples, outcomes)
                except AssertionError as failure:
                    print(f"FAILED {rpc.path}: {failure}")
                    failed = True
            print(f"  {rpc.path}: {time.monotonic() - started:.0f} s", flush=True)
        print(fuzz.report(outcomes))
        restarted = mesh.pids() != before
        print("no process died or restarted" if not restarted else "A PROCESS DIED OR RESTARTED")
        failed |= restarted
    finally:
        clean = mesh.down_and_report()
    return 1 if failed or not clean else 0


if __name__ == "__main__":
    sys.exit(main())
