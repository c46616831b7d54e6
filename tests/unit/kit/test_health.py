"""Health: SERVING while up, NOT_SERVING as soon as a graceful stop begins."""
import asyncio

import grpc
import pytest
from grpc_health.v1 import health_pb2

from .conftest import USER_SERVICE

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def test_check_reports_serving_for_the_server_and_each_bound_service(users):
    served = await users()
    for name in ("", USER_SERVICE):
        reply = await served.health.Check(health_pb2.HealthCheckRequest(service=name), timeout=2)
        assert reply.status == SERVING


async def test_check_on_an_unknown_service_is_not_found(users):
    served = await users()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await served.health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"),
                                  timeout=2)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_watch_sees_serving_then_not_serving_when_stop_begins(users):
    served = await users()
    watch = served.health.Watch(health_pb2.HealthCheckRequest(service=USER_SERVICE), timeout=2)
    assert (await watch.read()).status == SERVING

    stopping = asyncio.create_task(served.server.stop(grace_s=5))
    assert (await watch.read()).status == NOT_SERVING
    watch.cancel()
    await asyncio.wait_for(stopping, 5)
