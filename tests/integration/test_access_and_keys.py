"""Admin work through the gateway: tiers and roles (`aimesh user`), signing-key rotation
(`aimesh keys rotate`) with no failed call."""
import json
import urllib.request
import uuid

import grpc
import jwt
import pytest

from aimesh import demo
from aimesh.user.v1 import user_pb2, user_pb2_grpc
from services import kit
from tests.integration.client import PASSWORD, bearer, code_of, wait_for


def claims(token: str) -> dict:
    return jwt.decode(token, options={"verify_signature": False})


def kid(token: str) -> str:
    return jwt.get_unverified_header(token)["kid"]


def cli_ok(mesh, *args: str) -> str:
    run = mesh.cli(*args, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    return run.stdout


def test_admin_calls_are_permission_denied_to_a_user(users, alice):
    assert code_of(users.SetAccess, user_pb2.SetAccessRequest(
        email="alice@demo.aimesh", role=user_pb2.ROLE_ADMIN), metadata=bearer(alice),
        timeout=5) == grpc.StatusCode.PERMISSION_DENIED
    assert code_of(users.RotateSigningKey, user_pb2.RotateSigningKeyRequest(),
                   metadata=bearer(alice), timeout=5) == grpc.StatusCode.PERMISSION_DENIED


def test_a_tier_set_by_the_cli_shows_in_the_next_login(mesh, users):
    email = f"upgrade-{uuid.uuid4().hex[:8]}@example.com"
    cli_ok(mesh, "user", "create", email, "--password", PASSWORD)
    before = demo.login(mesh.gateway, email, PASSWORD)
    assert claims(before)["tier"] == "free"

    assert "TIER_PRO" in cli_ok(mesh, "user", "set", email, "--tier", "pro")
    after = users.Login(user_pb2.LoginRequest(email=email, password=PASSWORD), timeout=5)
    assert claims(after.access_token)["tier"] == "pro"
    profile = users.GetProfile(user_pb2.GetProfileRequest(), metadata=bearer(after.access_token),
                               timeout=5).profile
    assert (profile.tier, profile.role) == (user_pb2.TIER_PRO, user_pb2.ROLE_USER)


def test_an_admin_created_by_the_cli_can_do_admin_work(mesh, users):
    email = f"ops-{uuid.uuid4().hex[:8]}@example.com"
    cli_ok(mesh, "user", "create", email, "--role", "admin", "--password", PASSWORD)
    other = f"other-{uuid.uuid4().hex[:8]}@example.com"
    out = cli_ok(mesh, "user", "create", other, "--tier", "pro", "--admin", email,
                 "--admin-password", PASSWORD)
    assert "TIER_PRO" in out and "password:" in out     # a random password, printed once


@pytest.mark.parametrize("args, said", [
    (("token", "bob"), "INVALID_ARGUMENT: email: is not an email address"),
    (("token", "bob@demo.aimesh", "--password", "not the password"), "UNAUTHENTICATED"),
    (("user", "create", "not-an-address"), "INVALID_ARGUMENT: email"),
])
def test_the_cli_says_why_the_gateway_refused(mesh, args, said):
    run = mesh.cli(*args, timeout=60)
    assert run.returncode == 1 and run.stderr.startswith(f"aimesh: {said}"), run.stderr
    assert "Traceback" not in run.stderr


def test_a_bad_tier_is_invalid_argument_naming_the_field(mesh, users, admin):
    try:
        users.SetAccess(user_pb2.SetAccessRequest(email="bob@demo.aimesh", tier=7),
                        metadata=bearer(admin), timeout=5)
    except grpc.RpcError as refused:
        assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "tier" in kit.field_violations(refused)
    else:
        raise AssertionError("a tier of 7 was accepted")
    profile = users.GetProfile(user_pb2.GetProfileRequest(),
                               metadata=bearer(demo.login(mesh.gateway, "bob@demo.aimesh")),
                               timeout=5).profile
    assert profile.tier == user_pb2.TIER_PRO    # nothing changed


def envoy_jwks_cache_s(mesh) -> set[float]:
    """The JWKS cache durations in the running Envoy's config."""
    url = f"http://127.0.0.1:{mesh.topo.gateway.admin_port}/config_dump"
    found = set()

    def walk(node):
        if isinstance(node, dict):
            if "cache_duration" in node:
                found.add(float(node["cache_duration"].rstrip("s")))
            node = list(node.values())
        if isinstance(node, list):
            for child in node:
                walk(child)

    walk(json.load(urllib.request.urlopen(url, timeout=5)))
    return found


def test_key_rotation_keeps_old_tokens_working_and_new_ones_carry_the_new_key(mesh, users):
    # user-svc promotes a new key after the topology's cache time; an Envoy caching longer would
    # refuse new tokens (and every later test's) for minutes, so stop before rotating.
    if envoy_jwks_cache_s(mesh) != {mesh.topo.gateway.jwks_cache_s}:
        pytest.fail(f"Envoy caches the JWKS for {envoy_jwks_cache_s(mesh)} s, the topology says "
                    f"{mesh.topo.gateway.jwks_cache_s} s")
    old_token = demo.login(mesh.gateway, "alice@demo.aimesh")
    out = cli_ok(mesh, "keys", "rotate")
    new_kid = out.split("added key ", 1)[1].split(";", 1)[0]
    assert new_kid != kid(old_token)
    assert code_of(users.RotateSigningKey, user_pb2.RotateSigningKeyRequest(),   # one at a time
                   metadata=bearer(demo.login(mesh.gateway, "admin@demo.aimesh")),
                   timeout=5) == grpc.StatusCode.FAILED_PRECONDITION

    def works(token: str) -> None:
        """Every call must pass, on both listeners: a refused one fails the test at once."""
        for stub in (users, east_west):
            stub.GetProfile(user_pb2.GetProfileRequest(), metadata=bearer(token), timeout=5)

    def promoted() -> bool:
        fresh = demo.login(mesh.gateway, "alice@demo.aimesh")
        works(old_token)
        works(fresh)
        return kid(fresh) == new_kid

    with mesh.channel(mesh.mesh_listener) as channel:
        east_west = user_pb2_grpc.UserServiceStub(channel)
        wait_for(promoted, timeout_s=mesh.topo.gateway.jwks_cache_s + 60, interval_s=0.2,
                 what=f"tokens signed with {new_kid}")
        for _ in range(20):      # after the switch both keys verify
            works(old_token)
            works(demo.login(mesh.gateway, "alice@demo.aimesh"))
