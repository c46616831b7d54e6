"""Client-side test tools: tokens (genuine, forged, expired), polling with a bound, status codes."""
from __future__ import annotations

import time
import uuid

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from aimesh.user.v1 import user_pb2


def bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


def signing_key(mesh):
    """user-svc's newest signing key, read from its state directory (tests only)."""
    keys = sorted((mesh.state_dir / "services" / "user" / "keys").glob("*.pem"))
    return keys[-1].stem, serialization.load_pem_private_key(keys[-1].read_bytes(), None)


def token(mesh, *, key=None, kid=None, expires_in: int = 600, **claims) -> str:
    real_kid, real_key = signing_key(mesh)
    now = int(time.time())
    payload = {"sub": "00000000-0000-0000-0000-000000000001", "tier": "free", "role": "user",
               "iss": mesh.topo.gateway.issuer, "aud": mesh.topo.gateway.audience,
               "iat": now, "exp": now + expires_in, **claims}
    return jwt.encode(payload, key or real_key, algorithm="ES256", headers={"kid": kid or real_kid})


def forged_key():
    return ec.generate_private_key(ec.SECP256R1())


def wait_for(predicate, *, timeout_s: float = 10, interval_s: float = 0.1, what: str = "condition"):
    """Poll until predicate() returns a truthy value; fail after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(interval_s)


PASSWORD = "correct horse battery"


def register(users, email: str, password: str = PASSWORD, name: str = "Test"):
    return users.Register(user_pb2.RegisterRequest(email=email, password=password,
                                                   display_name=name), timeout=5)


def new_user(users, prefix: str) -> tuple[str, str]:
    """A freshly registered account: (email, access token)."""
    email = f"{prefix}-{uuid.uuid4().hex[:8]}@example.com"
    register(users, email)
    login = users.Login(user_pb2.LoginRequest(email=email, password=PASSWORD), timeout=5)
    return email, login.access_token


def code_of(call, *args, **kwargs) -> grpc.StatusCode:
    try:
        call(*args, **kwargs)
    except grpc.RpcError as error:
        return error.code()
    return grpc.StatusCode.OK
