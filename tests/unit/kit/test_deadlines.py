"""Outbound calls made while handling a request inherit its deadline (capped by the channel's
default) and forward its authorization, x-request-id and trace; they are not retried here
(Envoy does)."""
import json
from dataclasses import dataclass

import numpy as np
import pytest
from opentelemetry import propagate, trace

from aimesh.recommend.v1 import recommend_pb2, recommend_pb2_grpc
from aimesh.user.v1 import user_pb2, user_pb2_grpc
from services import kit
from services.kit import clients, telemetry
from services.kit.inference import Triton

from .conftest import Users, users_binding

CHANNEL_TIMEOUT_S = 30.0
# gRPC rounds a timeout up when it encodes grpc-timeout (30s is sent as 30.1s, 2s as 2.01s), so
# the receiver may see slightly more than the caller asked for.
WIRE_ROUNDING = 1.05


class Recommender(recommend_pb2_grpc.RecommendServiceServicer):
    """Server A: every Recommend calls server B's GetProfile through a kit channel."""

    def __init__(self, users_address: str):
        self.channel = clients.channel(users_address, timeout_s=CHANNEL_TIMEOUT_S)

    async def Recommend(self, request, context):
        await user_pb2_grpc.UserServiceStub(self.channel).GetProfile(user_pb2.GetProfileRequest())
        return recommend_pb2.RecommendResponse()


@dataclass
class CallDetails:
    method: str
    invocation_metadata: tuple


@pytest.fixture
def trace_backend(request, monkeypatch) -> bool:
    """Indirect parameter: OTEL_EXPORTER_OTLP_ENDPOINT set while the servers are made (nothing
    is sent: the unit tests' tracer is OpenTelemetry's no-op one)."""
    if named := getattr(request, "param", False):
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "127.0.0.1:4317")
    return named


@pytest.fixture
async def chain(serve, trace_backend):
    """(stub of A, what B saw: its time_remaining and its invocation metadata)."""
    seen = {}

    async def record(request, context):
        seen["remaining"] = context.time_remaining()
        seen["metadata"] = dict(context.invocation_metadata())
        seen["span"] = trace.get_current_span()
        return user_pb2.GetProfileResponse()

    b = await serve(users_binding(Users(record)), service="b")
    recommender = Recommender(b.address)
    a = await serve(kit.Binding(recommend_pb2_grpc.add_RecommendServiceServicer_to_server,
                                recommender), service="a")
    yield recommend_pb2_grpc.RecommendServiceStub(a.channel), seen
    await recommender.channel.close()


async def test_outbound_call_inherits_the_inbound_deadline_and_forwards_identity(chain):
    a, seen = chain
    await a.Recommend(recommend_pb2.RecommendRequest(), timeout=2,
                      metadata=(("authorization", "Bearer token-1"), ("x-request-id", "req-7")))
    assert 0 < seen["remaining"] <= 2 * WIRE_ROUNDING
    assert seen["metadata"]["authorization"] == "Bearer token-1"
    assert seen["metadata"]["x-request-id"] == "req-7"


async def test_outbound_call_without_an_inbound_deadline_gets_the_channel_default(chain):
    a, seen = chain
    await a.Recommend(recommend_pb2.RecommendRequest())
    assert seen["remaining"] is not None
    assert CHANNEL_TIMEOUT_S - 5 < seen["remaining"] <= CHANNEL_TIMEOUT_S * WIRE_ROUNDING
    assert "authorization" not in seen["metadata"]


CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
RECORDED = (("traceparent", f"00-{CALLER_TRACE}-00f067aa0ba902b7-01"),)
NOT_RECORDED = (("traceparent", f"00-{CALLER_TRACE}-00f067aa0ba902b7-00"),)


@pytest.mark.parametrize("trace_backend", [False, True], indirect=True, ids=["no backend", "backend"])
@pytest.mark.parametrize("sent", [RECORDED, NOT_RECORDED, ()], ids=["recorded", "not recorded", "none"])
async def test_the_callers_trace_or_a_new_one_goes_on_to_the_next_call(chain, sent, trace_backend):
    a, seen = chain
    await a.Recommend(recommend_pb2.RecommendRequest(), metadata=sent)
    version, trace_id, _, flags = seen["metadata"]["traceparent"].split("-")
    assert version == "00" and len(trace_id) == 32 and int(trace_id, 16)
    if sent:
        assert trace_id == CALLER_TRACE and flags == sent[0][1][-2:]
    span = seen["span"].get_span_context()   # B's log lines carry this trace id
    assert format(span.trace_id, "032x") == trace_id


@pytest.mark.parametrize("trace_backend", [False, True], indirect=True, ids=["no backend", "backend"])
async def test_a_call_made_while_handling_an_event_carries_the_events_trace(users, trace_backend):
    """No served call to take the trace from: the current context's (events.py enters the
    envelope's trace while its handler runs) goes on."""
    seen = {}

    async def record(request, context):
        seen.update(context.invocation_metadata())
        return user_pb2.GetProfileResponse()
    b = await users(record)
    channel = clients.channel(b.address, timeout_s=CHANNEL_TIMEOUT_S)
    try:
        with trace.use_span(trace.get_current_span(propagate.extract(dict(NOT_RECORDED)))):
            await user_pb2_grpc.UserServiceStub(channel).GetProfile(user_pb2.GetProfileRequest())
    finally:
        await channel.close()
    assert seen["traceparent"].split("-")[1] == CALLER_TRACE


def test_without_a_trace_backend_opentelemetry_makes_no_span():
    assert telemetry.server_interceptors() == [] and telemetry.client_interceptors() == []


def test_with_a_trace_backend_spans_are_made_only_in_recorded_traces(monkeypatch):
    """OpenTelemetry's interceptors are there, but filtered: a call whose trace is not recorded
    costs what it costs without them."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "127.0.0.1:4317")
    assert telemetry.server_interceptors() and telemetry.client_interceptors()
    method = "/aimesh.recommend.v1.RecommendService/Recommend"
    served = [telemetry._caller_recorded(CallDetails(method, sent)) for sent in (RECORDED, NOT_RECORDED, ())]
    assert served == [True, False, True]    # a call with no trace yet: the service's sampler decides
    made = []
    for sent in (RECORDED, NOT_RECORDED):
        with trace.use_span(trace.get_current_span(propagate.extract(dict(sent)))):
            made.append(telemetry._in_recorded_trace(None))
    assert made == [True, False] and not telemetry._in_recorded_trace(None)   # none: a call made alone


def test_a_kit_channel_adds_no_retry_layer_of_its_own():
    """Envoy retries upstream failures; a second policy here would multiply the attempts."""
    config = json.loads(clients.SERVICE_CONFIG)
    assert all("retryPolicy" not in method for method in config["methodConfig"])


async def test_a_model_stream_past_its_deadline_is_unavailable_naming_it():
    """A decoupled model's stream asked with no time left ends before its request goes out: the
    caller gets kit.Unavailable saying DEADLINE_EXCEEDED (found by the fuzzer: a saga step with
    its budget spent got asyncio's InvalidStateError, an unexpected error)."""
    channel = clients.channel("127.0.0.1:1", timeout_s=CHANNEL_TIMEOUT_S)
    try:
        with pytest.raises(kit.Unavailable, match="DEADLINE_EXCEEDED"):
            async for _ in Triton(channel).stream("chat_lm", {"MAX_TOKENS": np.array([1], np.int32)},
                                                  last_output="FINISH_REASON", timeout_s=-1):
                pass
    finally:
        await channel.close()
