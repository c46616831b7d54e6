"""The long fuzzing runs: hypothesis-generated requests from the contracts to every RPC.

- By default (bench/helpers/fuzz.py) to each service's handlers, set up in this process on a test
  database (bench/helpers/inprocess.py) beside the mesh, whose models and services they call.
- With --gateway (bench/helpers/gateway_fuzz.py) at the gateway's edge, each in gRPC, grpc-web and
  JSON, with the hand-made malformed requests too, as an admin.

Prints the answers per RPC (and protocol); fails at an INTERNAL/UNKNOWN, a field-less
INVALID_ARGUMENT, an HTTP 5xx (at the gateway), an error the in-process services logged (their
background work's too, e.g. a saga) or a dead process. A failing request of the
services' run is saved under tests/chaos/fuzz-examples and tried first by every later run.

Runs its own mesh with demo data (/tmp/aimesh-bench-fuzz-state on AIMESH_PORT_OFFSET=2000,
bench/topology.yaml: limits no run reaches) and brings it down; checks no process died or restarted.

  bin/aimesh bench fuzz [--examples N] [--only SUBSTRING] [--gateway]
"""
from __future__ import annotations

import argparse
import collections
import logging
import shutil
import sys
import time

from helpers import fuzz, gateway_fuzz, inprocess
from helpers.common import machine

from aimesh import demo
from aimesh.harness import MeshUnderTest


def main() -> int:
    parser = argparse.ArgumentParser(prog="aimesh bench fuzz")
    parser.add_argument("--examples", type=int, default=None,
                        help="requests per RPC (and protocol, at the gateway): 10,000 / 300 by default")
    parser.add_argument("--only", default="", help="only RPCs whose path contains this")
    parser.add_argument("--gateway", action="store_true", help="at the gateway, in every protocol")
    args = parser.parse_args()
    examples = args.examples or (300 if args.gateway else 10_000)
    where = "at the gateway, per protocol" if args.gateway else "to each service's handlers in-process"
    mesh = MeshUnderTest.for_bench(state="/tmp/aimesh-bench-fuzz-state")
    print(f"aimesh fuzz {where}: {examples} generated requests per RPC\nmachine: {machine()}")
    shutil.rmtree(mesh.state, ignore_errors=True)
    mesh.state.mkdir(parents=True)   # the in-process services' warnings go to a file there
    logging.basicConfig(filename=mesh.state / "inprocess-services.log", level=logging.WARNING)
    outcomes: collections.Counter = collections.Counter()
    failures: list[str] = []
    services = None
    try:
        print(f"mesh up with demo data in {mesh.up(demo_data=True):.1f} s")
        before = mesh.pids()
        gateway = (gateway_fuzz.Gateway(mesh.gateway, demo.login(mesh.gateway, "admin@demo.aimesh"))
                   if args.gateway else None)
        rpcs = [rpc for rpc in fuzz.rpcs(mesh.topo) if args.only in rpc.path]
        if not args.gateway:   # user-svc always: the run's caller is an account of its own
            services = inprocess.Services(mesh, sorted({"user", *(r.service for r in rpcs)}))
        run = None if services is None else fuzz.Run(services)
        for rpc in rpcs:
            started = time.monotonic()
            if gateway is not None:
                found = gateway_fuzz.run_malformed(rpc, gateway, outcomes)
                found += gateway_fuzz.run_generated(rpc, gateway, examples, outcomes)
            else:
                found = _at_the_service(run, rpc, examples)
            failures += found
            print(f"  {rpc.path}: {time.monotonic() - started:.0f} s, {len(found)} failed", flush=True)
        if gateway is not None:
            gateway.close()
            print(gateway_fuzz.report(outcomes) + "\n" + gateway_fuzz.summary(outcomes))
        else:
            print(fuzz.report(run.outcomes))
            failures += [f"logged by a service: {error}" for error in services.errors.records]
        for failure in failures[:50]:
            print(f"FAILED {failure}")
        restarted = mesh.pids() != before
        print("no process died or restarted" if not restarted else "A PROCESS DIED OR RESTARTED")
    finally:
        if services is not None:
            services.close()
        clean = mesh.down_and_report()
    return 1 if failures or restarted or not clean else 0


def _at_the_service(run: fuzz.Run, rpc: fuzz.Rpc, examples: int) -> list[str]:
    try:
        run.fuzz(rpc, examples)
    except AssertionError as failure:
        return [f"{rpc.path}: {failure}"]
    return []


if __name__ == "__main__":
    sys.exit(main())
