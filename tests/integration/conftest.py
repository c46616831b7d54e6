from __future__ import annotations

import pytest

from aimesh import demo
from aimesh.user.v1 import user_pb2_grpc


@pytest.fixture(scope="session")
def alice(mesh) -> str:
    return demo.login(mesh.gateway, "alice@demo.aimesh")


@pytest.fixture(scope="session")
def bob(mesh) -> str:
    return demo.login(mesh.gateway, "bob@demo.aimesh")


@pytest.fixture(scope="session")
def admin(mesh) -> str:
    return demo.login(mesh.gateway, "admin@demo.aimesh")


@pytest.fixture(scope="session")
def users(mesh):
    with mesh.channel() as channel:
        yield user_pb2_grpc.UserServiceStub(channel)
