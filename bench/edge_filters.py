"""What the edge's checks of a one-message call cost: Envoy's buffer filter (reads the request
whole, refuses it past the size limit) and the Lua framing check (aimesh/envoy/grpc_check.lua),
which the reliability work added to every unary and server-streaming call at the edge.

One mesh (bench/topology.yaml), and beside its Envoy a second one started by this script from the
same rendered config less those two filters (edge listener only, on ports of its own), in front of
the same user-svc. GetProfile through each, rows interleaved in ROUNDS so drift on the machine hits
both: p50/p99 at concurrency 1, requests/s at concurrency 16, and each Envoy's CPU ms per call.

Prints figures, asserts none. State in /tmp/aimesh-bench-edge-state (wiped), AIMESH_PORT_OFFSET
2000; the mesh is always brought down and the second Envoy stopped.

  bin/aimesh bench edge_filters
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import grpc
import numpy as np
import psutil
import yaml
from helpers import loadgen
from helpers.common import machine

from aimesh import demo
from aimesh.harness import MeshUnderTest
from aimesh.paths import venv_bin
from aimesh.supervisor import Supervisor
from aimesh.user.v1 import user_pb2, user_pb2_grpc

CHECKS = ("envoy.filters.http.buffer", "envoy.filters.http.lua")
SHIFT = 300            # the second Envoy's edge and admin ports: the mesh's + SHIFT
ROUNDS, SEQUENTIAL, CONCURRENT, CONCURRENCY = 6, 300, 600, 16


def without_checks(config: Path, out: Path) -> tuple[str, psutil.Process]:
    """Start an Envoy from `config` less the edge's checks: its address and process."""
    rendered = yaml.safe_load(config.read_text())
    rendered["admin"]["address"]["socket_address"]["port_value"] += SHIFT
    listeners = rendered["static_resources"]["listeners"]
    edge = next(listener for listener in listeners if listener["name"] == "edge")
    rendered["static_resources"]["listeners"] = [edge]
    edge["address"]["socket_address"]["port_value"] += SHIFT
    for chain in edge["filter_chains"]:
        for network_filter in chain["filters"]:
            manager = network_filter["typed_config"]
            manager["http_filters"] = [f for f in manager["http_filters"] if f["name"] not in CHECKS]
    out.write_text(yaml.safe_dump(rendered))
    envoy = subprocess.Popen([venv_bin("envoy"), "-c", str(out), "--disable-hot-restart", "--base-id", "7",
                              "--log-level", "warn"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    address = edge["address"]["socket_address"]
    return f"{address['address']}:{address['port_value']}", psutil.Process(envoy.pid)


def cpu_s(process: psutil.Process) -> float:
    return sum(sum(p.cpu_times()[:2]) for p in (process, *process.children(recursive=True)))


def row(stub, metadata, envoy: psutil.Process) -> tuple[np.ndarray, float, float]:
    def start(i: int, done: loadgen.Done) -> None:
        future = stub.GetProfile.future(user_pb2.GetProfileRequest(), metadata=metadata, timeout=10)
        future.add_done_callback(lambda f: done(f.exception()))
    before = cpu_s(envoy)
    sequential, _ = loadgen.run(SEQUENTIAL, 1, start)
    _, throughput = loadgen.run(CONCURRENT, CONCURRENCY, start)
    return sequential, throughput, (cpu_s(envoy) - before) * 1000 / (SEQUENTIAL + CONCURRENT)


def main() -> None:
    print(machine())
    mesh = MeshUnderTest.for_bench(state="/tmp/aimesh-bench-edge-state")
    shutil.rmtree(mesh.state, ignore_errors=True)
    plain = None
    try:
        print(f"mesh up in {mesh.up(demo_data=True):.1f} s")
        mesh_envoy = psutil.Process(Supervisor(mesh.state).pid("envoy"))
        address, plain = without_checks(mesh.state / "envoy" / "envoy.yaml", mesh.state / "envoy" / "unchecked.yaml")
        metadata = [("authorization", f"Bearer {demo.login(mesh.gateway, 'bob@demo.aimesh')}")]
        paths = {"with the checks": (mesh.gateway, mesh_envoy), "without": (address, plain)}
        figures: dict[str, list] = {name: [] for name in paths}
        channels = {name: grpc.insecure_channel(target) for name, (target, _) in paths.items()}
        try:
            stubs = {name: user_pb2_grpc.UserServiceStub(channel) for name, channel in channels.items()}
            for name, channel in channels.items():
                grpc.channel_ready_future(channel).result(timeout=30)
                row(stubs[name], metadata, paths[name][1])      # warm-up
            for _ in range(ROUNDS):
                for name in paths:
                    figures[name].append(row(stubs[name], metadata, paths[name][1]))
        finally:
            for channel in channels.values():
                channel.close()
        print(f"\nGetProfile through the edge, {ROUNDS} rounds interleaved: concurrency 1 "
              f"({SEQUENTIAL * ROUNDS} calls a row), concurrency {CONCURRENCY} ({CONCURRENT * ROUNDS})")
        base = None
        for name in paths:
            taken = np.concatenate([f[0] for f in figures[name]]) * 1000
            p50, p99 = np.percentile(taken, [50, 99])
            rate = float(np.median([f[1] for f in figures[name]]))
            cpu = float(np.median([f[2] for f in figures[name]]))
            print(f"  {name:<16} p50 {p50:5.2f} ms  p99 {p99:6.2f} ms  {rate:6.1f} requests/s  "
                  f"Envoy CPU {cpu:.3f} ms a call")
            if base is None:
                base = (p50, rate, cpu)
            else:
                print(f"  the checks add: p50 {base[0] - p50:+.3f} ms, Envoy CPU {base[2] - cpu:+.3f} ms a call, "
                      f"requests/s {base[1] / rate:.3f}x of without")
    finally:
        if plain is not None:
            plain.terminate()
            plain.wait(timeout=10)
        mesh.down_and_report()


if __name__ == "__main__":
    main()
