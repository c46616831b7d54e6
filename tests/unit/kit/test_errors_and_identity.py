"""Kit errors become gRPC statuses once, crashes leak nothing, identity comes from the gateway's
headers; plus the request validators and the environment config."""
import asyncpg
import grpc
import pytest

from aimesh.recommend.v1 import recommend_pb2
from aimesh.search.v1 import search_pb2
from aimesh.user.v1 import user_pb2
from services import kit
from services.kit import validate

IDENTITY = (("x-aimesh-user-id", "u-1"), ("x-aimesh-tier", "pro"), ("x-aimesh-role", "admin"))


async def run_in_handler(users, work, metadata=()):
    """Call GetProfile on a server whose handler runs `work(context)`; returns (what work
    returned, None) or (None, the call's error)."""
    seen = []

    async def handler(request, context):
        seen.append(work(context))
        return user_pb2.GetProfileResponse()

    served = await users(handler)
    try:
        await served.users.GetProfile(user_pb2.GetProfileRequest(), timeout=2, metadata=metadata)
    except grpc.aio.AioRpcError as error:
        return None, error
    return seen[0], None


def raise_(error):
    def work(context):
        raise error
    return work


async def test_invalid_argument_carries_its_field_violations(users):
    _, error = await run_in_handler(users, raise_(kit.InvalidArgument("limit", "must be 1..100")))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert kit.field_violations(error) == {"limit": "must be 1..100"}


async def test_not_found_is_not_found(users):
    _, error = await run_in_handler(users, raise_(kit.NotFound("no such job")))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error.details() == "no such job"


async def test_unexpected_exception_is_internal_and_leaks_nothing(users):
    _, error = await run_in_handler(users, raise_(RuntimeError("secret in /etc/app.conf")))
    assert error.code() == grpc.StatusCode.INTERNAL
    assert error.details() == "internal error"
    assert "secret" not in str(error) and "Traceback" not in str(error)


@pytest.mark.parametrize("error", [
    asyncpg.exceptions.CannotConnectNowError("the database system is starting up"),
    asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
    # a pooled connection whose server was SIGKILLed mid-operation, at its next use
    asyncpg.exceptions.InternalClientError("cannot switch to state 15; another operation (2) is in progress"),
    ConnectionRefusedError(111, "Connect call failed"),
], ids=lambda error: type(error).__name__)
async def test_a_database_that_is_away_is_unavailable_not_internal(users, error):
    _, refused = await run_in_handler(users, raise_(error))
    assert refused.code() == grpc.StatusCode.UNAVAILABLE
    assert refused.details() == "database unavailable; try again"


async def test_caller_without_identity_headers_is_unauthenticated(users):
    _, error = await run_in_handler(users, kit.caller)
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_caller_is_read_from_the_gateway_headers(users):
    who, error = await run_in_handler(users, kit.caller, metadata=IDENTITY)
    assert error is None
    assert who == kit.Caller(user_id="u-1", tier="pro", role="admin")
    assert who.is_admin


async def test_admin_refuses_a_user(users):
    metadata = (("x-aimesh-user-id", "u-2"), ("x-aimesh-role", "user"))
    _, error = await run_in_handler(users, kit.admin, metadata=metadata)
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_admin_accepts_an_admin(users):
    who, error = await run_in_handler(users, kit.admin, metadata=IDENTITY)
    assert error is None and who.user_id == "u-1"


def violation(check, *args, **kwargs) -> list:
    with pytest.raises(kit.InvalidArgument) as caught:
        check(*args, **kwargs)
    return caught.value.violations


def test_text_strips_and_requires_a_value():
    assert validate.text(user_pb2.RegisterRequest(display_name="  Ann "), "display_name") == "Ann"
    assert violation(validate.text, user_pb2.RegisterRequest(display_name="   "),
                     "display_name") == [("display_name", "is required")]
    [(field, _)] = violation(validate.text, user_pb2.RegisterRequest(display_name="x" * 81),
                             "display_name", max_len=80)
    assert field == "display_name"


def test_in_range_uses_the_default_for_zero_and_refuses_out_of_range():
    assert validate.in_range(recommend_pb2.RecommendRequest(limit=0), "limit", 1, 100,
                             default=10) == 10
    assert validate.in_range(recommend_pb2.RecommendRequest(limit=100), "limit", 1, 100) == 100
    for limit in (0, 101, -1):
        [(field, _)] = violation(validate.in_range, recommend_pb2.RecommendRequest(limit=limit),
                                 "limit", 1, 100)
        assert field == "limit"


def test_count_bounds_a_repeated_field():
    request = recommend_pb2.RecommendRequest(exclude_item_ids=[1, 2, 3])
    assert validate.count(request, "exclude_item_ids", 0, 3) == [1, 2, 3]
    [(field, _)] = violation(validate.count, request, "exclude_item_ids", 0, 2)
    assert field == "exclude_item_ids"


def test_email_is_normalised_and_malformed_ones_refused():
    assert validate.email(user_pb2.RegisterRequest(email=" Ann@Example.COM ")) == "ann@example.com"
    for bad in ("ann", "@example.com", "ann@example", "an n@example.com"):
        assert violation(validate.email, user_pb2.RegisterRequest(email=bad)) == [
            ("email", "is not an email address")], bad


def test_page_offset_reads_a_numeric_token_and_refuses_others():
    assert validate.page_offset(search_pb2.SearchRequest()) == 0
    assert validate.page_offset(search_pb2.SearchRequest(page_token="20")) == 20
    [(field, _)] = violation(validate.page_offset, search_pb2.SearchRequest(page_token="abc"))
    assert field == "page_token"


@pytest.mark.parametrize("demo", [True, False])
def test_config_round_trips_through_the_environment(demo):
    config = kit.Config(service="search", instance="search-2", port=7001, grace_s=2.5,
                        token_ttl_s=60, demo=demo)
    assert kit.Config.from_env(config.to_env()) == config


def test_config_from_env_reads_only_aimesh_variables_and_defaults_the_rest():
    config = kit.Config.from_env({"AIMESH_PORT": "9000", "AIMESH_DEMO": "yes", "PORT": "1"})
    assert (config.port, config.demo, config.service) == (9000, True, "unknown")
    assert kit.Config.from_env({"AIMESH_DEMO": "0"}).demo is False


def test_text_refuses_nul_naming_the_field():
    """Postgres stores no NUL character: refused up front, not INTERNAL from the database."""
    [(field, why)] = violation(validate.text, user_pb2.RegisterRequest(display_name="An\x00n"),
                               "display_name")
    assert field == "display_name" and "NUL" in why


async def test_bytes_that_are_not_the_request_message_are_invalid_argument(users):
    """gRPC would answer UNKNOWN ("Unexpected DecodeError"), as if the server had failed."""
    served = await users()
    garbage = served.channel.unary_unary("/aimesh.user.v1.UserService/GetProfile",
                                         request_serializer=None, response_deserializer=None)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await garbage(b"\xff\xff\xff\xff not protobuf", timeout=2, metadata=IDENTITY)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert list(kit.field_violations(refused.value)) == ["request"]
