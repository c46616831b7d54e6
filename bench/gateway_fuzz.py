"""The long fuzzing run at the gateway's edge (bench/helpers/gateway_fuzz.py): for every RPC the
gateway routes, the hand-made malformed requests and N requests generated from the contract, each
in gRPC, grpc-web and JSON, with an admin's token; prints the answers per RPC and protocol and
every one that was not clear (HTTP 5xx, INTERNAL, UNKNOWN, an INVALID_ARGUMENT naming no field).

Runs its own mesh with demo data (/tmp/aimesh-bench-gateway-fuzz-state on AIMESH_PORT_OFFSET=2000,
bench/topology.yaml: limits no run reaches) and brings it down; checks no process died or restarted.

  bin/aimesh bench gateway_fuzz [--examples N] [--only SUBSTRING]
"""
from __future__ import annotations

import argparse
import collections
import shutil
import sys
import time

from helpers import fuzz, gateway_fuzz
from helpers.common import machine

from aimesh import demo
from aimesh.harness import MeshUnderTest


def main() -> int:
    parser = argparse.ArgumentParser(prog="aimesh bench gateway_fuzz")
    parser.add_argument("--examples", type=int, default=300, help="generated requests per RPC and protocol")
    parser.add_argument("--only", default="", help="only RPCs whose path contains this")
    args = parser.parse_args()
    mesh = MeshUnderTest.for_bench(state="/tmp/aimesh-bench-gateway-fuzz-state")
    print(f"aimesh gateway fuzz: {args.examples} generated requests per RPC and protocol\nmachine: {machine()}")
    shutil.rmtree(mesh.state, ignore_errors=True)
    outcomes: collections.Counter = collections.Counter()
    problems: list[str] = []
    try:
        print(f"mesh up with demo data in {mesh.up(demo_data=True):.1f} s")
        before = mesh.pids()
        gateway = gateway_fuzz.Gateway(mesh.gateway, demo.login(mesh.gateway, "admin@demo.aimesh"))
        for rpc in fuzz.rpcs(mesh.topo):
            if args.only not in rpc.path:
                continue
            started = time.monotonic()
            found = gateway_fuzz.run_malformed(rpc, gateway, outcomes)
            found += gateway_fuzz.run_generated(rpc, gateway, args.examples, outcomes)
            problems += found
            print(f"  {rpc.path}: {time.monotonic() - started:.0f} s, {len(found)} unclear answers", flush=True)
        gateway.close()
        print(gateway_fuzz.report(outcomes))
        print(gateway_fuzz.summary(outcomes))
        for problem in problems[:50]:
            print(f"UNCLEAR {problem}")
        restarted = mesh.pids() != before
        print("no process died or restarted" if not restarted else "A PROCESS DIED OR RESTARTED")
    finally:
        clean = mesh.down_and_report()
    return 1 if problems or restarted or not clean else 0


if __name__ == "__main__":
    sys.exit(main())
