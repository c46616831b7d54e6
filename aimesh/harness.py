"""One way to run a mesh from code, for the tests' session mesh and the benchmarks' meshes: the
CLI (`python -m aimesh ...`) as a user runs it, on a state dir and ports of its own, and the
clients a test or a benchmark needs (the edge, the east-west listener as the operator, a
service's own port as the gateway, Postgres, NATS, access tokens as user-svc signs them)."""
from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import asyncpg
import grpc
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from services.kit.events import Events
from services.kit.tls import GATEWAY, Identity, dns_name

from . import infra, paths, topology
from .mesh import PortInUse, check_ports_free
from .supervisor import Supervisor

BENCH_STATE = "/tmp/aimesh-bench-state"
BENCH_PORT_OFFSET = 2000
BENCH_TOPOLOGY = paths.ROOT / "bench" / "topology.yaml"


class MeshUnderTest:
    def __init__(self, state_dir: Path | str, port_offset: int, topology_file: Path | str,
                 env: dict[str, str] | None = None):
        self.state_dir = Path(state_dir).resolve()
        self.env = {**os.environ, **(env or {}), "AIMESH_STATE": str(self.state_dir),
                    "AIMESH_PORT_OFFSET": str(port_offset), "AIMESH_TOPOLOGY": str(topology_file)}
        self.topo = topology.load(Path(topology_file), port_offset=port_offset)
        self.seen: list = []          # every mesh process observed (psutil), for `leftovers`
        if self.state_dir == (paths.ROOT / ".aimesh").resolve():
            raise ValueError("refusing to run a harness in the dev state dir: give a scratch path")

    @classmethod
    def for_bench(cls, *, state: str = BENCH_STATE, topology_file: Path = BENCH_TOPOLOGY) -> MeshUnderTest:
        """A benchmark's mesh: AIMESH_STATE, AIMESH_PORT_OFFSET and AIMESH_TOPOLOGY override
        the defaults given here (a scratch state dir, offset 2000, bench/topology.yaml)."""
        return cls(os.environ.get("AIMESH_STATE", state),
                   int(os.environ.get("AIMESH_PORT_OFFSET", BENCH_PORT_OFFSET)),
                   os.environ.get("AIMESH_TOPOLOGY", topology_file))

    @property
    def state(self) -> Path:
        return self.state_dir

    @property
    def gateway(self) -> str:
        return f"127.0.0.1:{self.topo.gateway.edge_port}"

    @property
    def mesh_listener(self) -> str:
        return f"127.0.0.1:{self.topo.gateway.mesh_port}"

    # --- the CLI ---------------------------------------------------------------------------

    def cli(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "aimesh", *args], env=self.env, cwd=paths.ROOT,
                              capture_output=True, text=True, timeout=timeout)

    def run(self, *args: str) -> float:
        """Run one command that must succeed; its wall time in seconds."""
        started = time.perf_counter()
        result = self.cli(*args, timeout=900)
        if result.returncode != 0:
            raise RuntimeError(f"aimesh {' '.join(args)} exited {result.returncode}:\n"
                               f"{result.stdout}{result.stderr}")
        return time.perf_counter() - started

    def up(self, *, demo_data: bool = False) -> float:
        return self.run("up", *([] if demo_data else ["--no-demo"]))

    def down(self) -> None:
        self.seen += [p for procs in self.processes().values() for p in procs]
        self.run("down")

    def down_and_report(self) -> bool:
        """Bring the mesh down and say whether anything was left running; True when clean."""
        self.down()
        left = self.leftovers()
        print(f"\nmesh down: {'nothing left running' if not left else 'LEFT RUNNING: ' + ', '.join(left)}")
        return not left

    # --- its processes ---------------------------------------------------------------------

    def pids(self) -> set[int]:
        return {int(p.read_text()) for p in (self.state_dir / "run").glob("*.pid")}

    def processes(self) -> dict[str, list]:
        """Each running component's process and all its descendants (psutil)."""
        import psutil
        tree = {}
        for name, pid in Supervisor(self.state_dir).running().items():
            try:
                root = psutil.Process(pid)
                tree[name] = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                pass
        return tree

    def leftovers(self) -> list[str]:
        """What still runs or listens after `down`: pid files, processes seen, mesh ports."""
        import psutil

        def alive(process) -> bool:
            try:   # is_running() also checks the pid was not reused by another process
                return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
            except psutil.Error:
                return False
        left = [f"{n} (pid {p}, pid file)" for n, p in Supervisor(self.state_dir).running().items()]
        left += [f"pid {p.pid}" for p in {p.pid: p for p in self.seen}.values() if alive(p)]
        try:
            check_ports_free(self.topo)
        except PortInUse as busy:
            left.append(str(busy))
        return left

    # --- clients ---------------------------------------------------------------------------

    @property
    def operator(self) -> Identity | None:
        return infra.operator(self.topo, self.state_dir)

    def channel(self, target: str | None = None) -> grpc.Channel:
        """To the edge (plaintext, as a client), or, as the operator with its certificate, to the
        east-west listener."""
        if target == self.mesh_listener:
            return self.secure_channel(target, GATEWAY)
        return grpc.insecure_channel(target or self.gateway)

    def secure_channel(self, target: str, server: str, identity: Identity | None = None) -> grpc.Channel:
        """mTLS to `server` (a workload name) at `target`, as the operator or `identity`."""
        who = identity or self.operator
        if who is None:
            return grpc.insecure_channel(target)
        return grpc.secure_channel(target, who.channel_credentials(),
                                   options=[("grpc.ssl_target_name_override", dns_name(server))])

    def direct(self, instance: str, service: str) -> grpc.Channel:
        """To an instance's own port, as the gateway (with its certificate when mTLS is on)."""
        port = next(i.port for _, i in self.topo.instances() if i.name == instance)
        return self.secure_channel(f"127.0.0.1:{port}", service,
                                   infra.as_workload(self.topo, self.state_dir, GATEWAY))

    def postgres_dsn(self, role: str = infra.SUPERUSER) -> str:
        return infra.postgres_dsn(self.topo.infra, self.state_dir, role)

    def signing_key(self) -> tuple[str, ec.EllipticCurvePrivateKey]:
        """user-svc's newest signing key (its kid and private key), read from its table."""
        async def newest():
            connection = await asyncpg.connect(self.postgres_dsn())
            try:
                return await connection.fetchrow(
                    'SELECT kid, private_pem FROM "user".signing_keys ORDER BY kid DESC LIMIT 1')
            finally:
                await connection.close()
        row = asyncio.run(newest())
        key = serialization.load_pem_private_key(row["private_pem"], None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return row["kid"], key

    def token(self, *, key=None, kid: str | None = None, expires_in: int = 600, **claims) -> str:
        """An access token as user-svc signs them (its newest key, unless `key`/`kid` forge one),
        for the claims given over a free user's defaults."""
        real_kid, real_key = self.signing_key()
        now = int(time.time())
        payload = {"sub": "00000000-0000-0000-0000-000000000001", "tier": "free", "role": "user",
                   "iss": self.topo.gateway.issuer, "aud": self.topo.gateway.audience,
                   "iat": now, "exp": now + expires_in, **claims}
        return jwt.encode(payload, key or real_key, algorithm="ES256", headers={"kid": kid or real_kid})

    async def events(self, name: str) -> Events:
        """A NATS connection as the operator."""
        return await infra.events(self.topo, self.state_dir, name)


class RecommendTraffic:
    """Recommend calls through the gateway from a few threads while something changes (a fresh
    exclude list each, so no cached answer hides the model): how many the model answered, how
    many fell back, and every error by status. A context manager: the threads run inside it."""

    def __init__(self, mesh: MeshUnderTest, token: str, threads: int = 3, pace_s: float = 0.05):
        import collections
        self.mesh, self.token, self.pace_s = mesh, token, pace_s
        self.stop = threading.Event()
        self.outcomes: collections.Counter[str] = collections.Counter()
        self.threads = [threading.Thread(target=self._call) for _ in range(threads)]

    def _call(self) -> None:
        from aimesh.common.v1 import common_pb2
        from aimesh.recommend.v1 import recommend_pb2, recommend_pb2_grpc
        with self.mesh.channel() as channel:
            stub = recommend_pb2_grpc.RecommendServiceStub(channel)
            while not self.stop.wait(self.pace_s):
                request = recommend_pb2.RecommendRequest(limit=3, exclude_item_ids=[random.randint(10**6, 10**9)])
                try:
                    reply = stub.Recommend(request, metadata=(("authorization", f"Bearer {self.token}"),),
                                           timeout=10)
                    self.outcomes["model" if reply.source == common_pb2.SOURCE_MODEL else "fallback"] += 1
                except grpc.RpcError as failed:
                    self.outcomes[failed.code().name] += 1

    @property
    def errors(self) -> dict[str, int]:
        return {k: n for k, n in self.outcomes.items() if k not in ("model", "fallback")}

    def snapshot(self):
        return self.outcomes.copy()

    def __enter__(self) -> RecommendTraffic:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join()
