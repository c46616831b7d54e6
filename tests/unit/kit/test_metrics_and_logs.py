"""Every RPC is counted per service, method and code, and logged as one JSON line that carries
the caller's x-request-id."""
import json
import logging

import grpc
import pytest
from prometheus_client import REGISTRY

from aimesh.user.v1 import user_pb2
from services import kit
from services.kit.logs import JsonFormatter

from .conftest import GET_PROFILE


def handled(service: str, code: str) -> float:
    labels = {"service": service, "method": GET_PROFILE, "code": code}
    return REGISTRY.get_sample_value("aimesh_grpc_server_handled_total", labels) or 0.0


async def not_found(request, context):
    raise kit.NotFound("nothing here")


async def test_handled_total_counts_each_call_by_code(users):
    ok_server = await users(service="metrics-ok")
    failing = await users(not_found, service="metrics-failing")
    before = handled("metrics-ok", "OK"), handled("metrics-failing", "NOT_FOUND")

    await ok_server.users.GetProfile(user_pb2.GetProfileRequest(), timeout=2)
    await ok_server.users.GetProfile(user_pb2.GetProfileRequest(), timeout=2)
    with pytest.raises(grpc.aio.AioRpcError):
        await failing.users.GetProfile(user_pb2.GetProfileRequest(), timeout=2)

    assert handled("metrics-ok", "OK") == before[0] + 2
    assert handled("metrics-failing", "NOT_FOUND") == before[1] + 1
    assert handled("metrics-ok", "NOT_FOUND") == 0


class Lines(logging.Handler):
    """Formats at emit time, in the RPC's context, as the service's stderr handler does."""

    def __init__(self):
        super().__init__()
        self.setFormatter(JsonFormatter("t"))
        self.lines: list[dict] = []

    def emit(self, record):
        self.lines.append(json.loads(self.format(record)))


@pytest.fixture
def rpc_log(caplog):
    caplog.set_level(logging.INFO, logger="aimesh.rpc")
    lines = Lines()
    logger = logging.getLogger("aimesh.rpc")
    logger.addHandler(lines)
    yield lines.lines
    logger.removeHandler(lines)


async def test_rpc_log_line_carries_method_code_and_request_id(users, rpc_log):
    served = await users(not_found)
    with pytest.raises(grpc.aio.AioRpcError):
        await served.users.GetProfile(user_pb2.GetProfileRequest(), timeout=2,
                                      metadata=(("x-request-id", "req-42"),))

    [line] = [line for line in rpc_log if line.get("request_id") == "req-42"]
    assert line["message"] == "rpc"
    assert line["method"] == GET_PROFILE
    assert line["code"] == "NOT_FOUND"
    assert line["detail"] == "nothing here"


async def test_rpc_without_request_id_gets_a_fresh_one(users, rpc_log):
    served = await users()
    await served.users.GetProfile(user_pb2.GetProfileRequest(), timeout=2)
    await served.users.GetProfile(user_pb2.GetProfileRequest(), timeout=2)

    ids = [line["request_id"] for line in rpc_log if line.get("method") == GET_PROFILE]
    assert len(ids) == 2 and all(ids) and ids[0] != ids[1]
