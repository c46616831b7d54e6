"""Graceful stop: in-flight calls finish within the grace period, new calls are refused, and a
real service process exits 0 on SIGTERM."""
import asyncio
import os
import signal
import socket
import subprocess
import sys
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from aimesh import paths
from aimesh.user.v1 import user_pb2, user_pb2_grpc
from services import kit

from .conftest import eventually


async def test_stop_drains_an_in_flight_call_and_refuses_new_ones(users):
    entered, release = asyncio.Event(), asyncio.Event()

    async def blocked(request, context):
        entered.set()
        await release.wait()
        return user_pb2.GetProfileResponse(profile=user_pb2.Profile(user_id="drained"))

    served = await users(blocked)
    in_flight = asyncio.ensure_future(served.users.GetProfile(user_pb2.GetProfileRequest(),
                                                              timeout=10))
    await asyncio.wait_for(entered.wait(), 5)

    grace_s = 5.0
    began = time.monotonic()
    stopping = asyncio.create_task(served.server.stop(grace_s))

    async def refused() -> bool:
        async with grpc.aio.insecure_channel(served.address) as fresh:
            try:
                await user_pb2_grpc.UserServiceStub(fresh).GetProfile(
                    user_pb2.GetProfileRequest(), timeout=1)
            except grpc.aio.AioRpcError as error:
                return error.code() == grpc.StatusCode.UNAVAILABLE
            return False
    await eventually(refused)
    assert not in_flight.done()

    release.set()
    reply = await asyncio.wait_for(in_flight, grace_s)
    assert reply.profile.user_id == "drained"
    await asyncio.wait_for(stopping, grace_s)
    assert time.monotonic() - began < grace_s


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _serving(address: str) -> bool:
    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=0.5)
        except grpc.RpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def _handles_sigterm(pid: int) -> bool:
    """Whether the process has installed a SIGTERM handler (Linux: SigCgt in /proc)."""
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) & (1 << (signal.SIGTERM - 1)))
    return False


def test_service_process_exits_zero_on_sigterm():
    port = _free_port()
    config = kit.Config(service="catalog", port=port, descriptor_set=str(paths.DESCRIPTOR_SET))
    env = {**os.environ, **config.to_env(),
           "PYTHONPATH": f"{paths.ROOT}{os.pathsep}{paths.GEN / 'python'}"}
    env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
    process = subprocess.Popen([sys.executable, "-m", "services.catalog"], env=env, cwd=paths.ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 30
        # run() reports SERVING a moment before it installs its SIGTERM handler: wait for both.
        while not (_serving(f"127.0.0.1:{port}") and _handles_sigterm(process.pid)):
            assert process.poll() is None, f"exited early:\n{process.communicate()[0]}"
            assert time.monotonic() < deadline, "not SERVING within 30s"
            time.sleep(0.05)

        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=10)
        assert process.returncode == 0, output
        assert '"message": "stopped"' in output
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
