"""Identity at the gateway: tokens from Login, verified by Envoy on both listeners."""
import uuid

import grpc
import pytest

from aimesh.user.v1 import user_pb2
from tests.integration.client import bearer, code_of, forged_key, register


def test_register_login_and_read_own_profile(users):
    email = f"reg-{uuid.uuid4().hex[:8]}@example.com"
    registered = register(users, email, name="Reggie").profile
    login = users.Login(user_pb2.LoginRequest(email=email, password="correct horse battery"),
                        timeout=5)
    profile = users.GetProfile(user_pb2.GetProfileRequest(), metadata=bearer(login.access_token),
                               timeout=5).profile
    assert profile.user_id == registered.user_id
    assert (profile.email, profile.display_name, profile.tier) == (email, "Reggie", user_pb2.TIER_FREE)


def test_a_taken_email_is_already_exists(users):
    email = f"twice-{uuid.uuid4().hex[:8]}@example.com"
    register(users, email)
    assert code_of(register, users, email) == grpc.StatusCode.ALREADY_EXISTS


def test_wrong_password_is_unauthenticated(users):
    assert code_of(users.Login, user_pb2.LoginRequest(email="alice@demo.aimesh", password="nope-nope"),
                   timeout=5) == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize("listener", ["gateway", "mesh_listener"])
def test_missing_forged_and_expired_tokens_are_refused_on_both_listeners(mesh, listener):
    from aimesh.user.v1 import user_pb2_grpc
    with mesh.channel(getattr(mesh, listener)) as channel:
        stub = user_pb2_grpc.UserServiceStub(channel)

        def profile(metadata):
            return code_of(stub.GetProfile, user_pb2.GetProfileRequest(), metadata=metadata, timeout=5)

        assert profile([]) == grpc.StatusCode.UNAUTHENTICATED
        assert profile(bearer(mesh.token(key=forged_key()))) == grpc.StatusCode.UNAUTHENTICATED
        assert profile(bearer(mesh.token(expires_in=-120))) == grpc.StatusCode.UNAUTHENTICATED
        assert profile(bearer("not-a-jwt")) == grpc.StatusCode.UNAUTHENTICATED


def test_a_token_signed_with_the_real_key_passes(mesh, users):
    """The control for the test above: the same path with a genuine signature gets through
    (the made-up user has no account, so user-svc answers NOT_FOUND, not the gateway)."""
    assert code_of(users.GetProfile, user_pb2.GetProfileRequest(),
                   metadata=bearer(mesh.token()), timeout=5) == grpc.StatusCode.NOT_FOUND


def test_client_sent_identity_headers_are_replaced_by_the_token(users, alice, bob):
    bob_id = users.GetProfile(user_pb2.GetProfileRequest(), metadata=bearer(bob), timeout=5).profile.user_id
    spoofed = bearer(alice) + [("x-aimesh-user-id", bob_id), ("x-aimesh-role", "admin")]
    profile = users.GetProfile(user_pb2.GetProfileRequest(), metadata=spoofed, timeout=5).profile
    assert profile.email == "alice@demo.aimesh"


def test_identity_headers_without_a_token_are_refused(users, bob):
    assert code_of(users.GetProfile, user_pb2.GetProfileRequest(),
                   metadata=[("x-aimesh-user-id", "anyone")], timeout=5) == grpc.StatusCode.UNAUTHENTICATED
