"""In-process kit servers on 127.0.0.1 (port 0) with a UserService whose GetProfile runs
whatever the test gives it, plus a bounded poll."""
from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import grpc
import pytest
from grpc_health.v1 import health_pb2_grpc

from aimesh.user.v1 import user_pb2, user_pb2_grpc
from services import kit

USER_SERVICE = "aimesh.user.v1.UserService"
GET_PROFILE = f"/{USER_SERVICE}/GetProfile"

Behaviour = Callable[[user_pb2.GetProfileRequest, grpc.aio.ServicerContext], Awaitable]


async def ok(request, context) -> user_pb2.GetProfileResponse:
    return user_pb2.GetProfileResponse()


class Users(user_pb2_grpc.UserServiceServicer):
    """GetProfile runs `behaviour(request, context)`."""

    def __init__(self, behaviour: Behaviour = ok):
        self.behaviour = behaviour

    async def GetProfile(self, request, context):
        return await self.behaviour(request, context)


def users_binding(servicer) -> kit.Binding:
    return kit.Binding(user_pb2_grpc.add_UserServiceServicer_to_server, servicer)


@dataclass
class Served:
    server: kit.Server
    channel: grpc.aio.Channel

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    @property
    def users(self) -> user_pb2_grpc.UserServiceStub:
        return user_pb2_grpc.UserServiceStub(self.channel)

    @property
    def health(self) -> health_pb2_grpc.HealthStub:
        return health_pb2_grpc.HealthStub(self.channel)


@pytest.fixture
async def serve():
    """`await serve(binding, ..., service=name)`: a started kit.Server and a channel to it;
    both closed at teardown."""
    started: list[Served] = []

    async def start(*bindings: kit.Binding, service: str = "t") -> Served:
        server = kit.Server(kit.Config(service=service, port=0), list(bindings))
        await server.start()
        served = Served(server, grpc.aio.insecure_channel(f"127.0.0.1:{server.port}"))
        started.append(served)
        return served

    yield start
    for served in started:
        await served.channel.close()
        await served.server.stop(0)


@pytest.fixture
async def users(serve) -> Callable[..., Awaitable[Served]]:
    """`await users(behaviour)`: a server whose GetProfile runs `behaviour`."""
    async def start(behaviour: Behaviour = ok, service: str = "t") -> Served:
        return await serve(users_binding(Users(behaviour)), service=service)
    return start


async def eventually(check: Callable[[], Awaitable[bool]], timeout_s: float = 5.0,
                     interval_s: float = 0.01) -> None:
    """Poll `check` until it returns True; fail after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not await check():
        assert time.monotonic() < deadline, f"not true within {timeout_s}s"
        await asyncio.sleep(interval_s)
