"""The fuzzer's in-process calls (bench/helpers/inprocess.py) report what a gRPC client would
see: a kit error's status and fields, a crash as INTERNAL with its traceback, bytes that are not
the request as INVALID_ARGUMENT naming `request`, a call past its deadline, and the gateway's
identity to the handler."""
import asyncio

import grpc

from aimesh.user.v1 import user_pb2, user_pb2_grpc
from bench.helpers import inprocess
from services import kit
from services.kit.identity import USER_ID_HEADER

PATH = "/aimesh.user.v1.UserService/"


class Users(user_pb2_grpc.UserServiceServicer):
    async def GetProfile(self, request, context):
        return user_pb2.GetProfileResponse(
            profile=user_pb2.Profile(user_id=kit.caller(context).user_id))

    async def UpdateProfile(self, request, context):
        raise kit.InvalidArgument("display_name", "is too long")

    async def Login(self, request, context):
        raise ValueError("a bug")

    async def Register(self, request, context):
        await asyncio.sleep(10)


async def calls() -> dict:
    return await inprocess.handlers(kit.Binding(user_pb2_grpc.add_UserServiceServicer_to_server, Users()), "user")


async def test_an_answer_and_the_callers_identity():
    handlers = await calls()
    outcome = await inprocess.call(handlers[PATH + "GetProfile"], b"", [(USER_ID_HEADER, "u-1")], 5)
    assert outcome.code == grpc.StatusCode.OK and outcome.answers[0].profile.user_id == "u-1"


async def test_a_refusal_names_its_field():
    handlers = await calls()
    outcome = await inprocess.call(handlers[PATH + "UpdateProfile"], b"", [], 5)
    assert outcome.code == grpc.StatusCode.INVALID_ARGUMENT
    assert outcome.fields == {"display_name": "is too long"}


async def test_a_crash_is_internal_with_its_traceback():
    handlers = await calls()
    outcome = await inprocess.call(handlers[PATH + "Login"], b"", [], 5)
    assert outcome.code == grpc.StatusCode.INTERNAL and "ValueError: a bug" in outcome.crash


async def test_bytes_that_are_not_the_request_name_request():
    handlers = await calls()
    outcome = await inprocess.call(handlers[PATH + "Login"], b"\xff\xff", [], 5)
    assert outcome.code == grpc.StatusCode.INVALID_ARGUMENT and "request" in outcome.fields


async def test_a_call_past_its_deadline():
    handlers = await calls()
    outcome = await inprocess.call(handlers[PATH + "Register"], b"", [], 0.2)
    assert outcome.code == grpc.StatusCode.DEADLINE_EXCEEDED
