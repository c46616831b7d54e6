"""kit.tls in one process: a kit server with a workload certificate serves its API only to the
gateway, health alone on the plaintext probe port, and a kit channel moves to a renewed
certificate without a restart."""
from __future__ import annotations

import datetime

import grpc
import pytest
from cryptography import x509
from grpc_health.v1 import health_pb2, health_pb2_grpc

from aimesh import certs
from aimesh.user.v1 import user_pb2, user_pb2_grpc
from services import kit
from services.kit import clients, tls
from services.kit.tls import GATEWAY, Identity, dns_name

from .conftest import Users, users_binding

HOUR = datetime.timedelta(hours=1)


@pytest.fixture
def authority(tmp_path) -> certs.Authority:
    authority = certs.Authority(tmp_path)
    authority.ensure([GATEWAY, "user", "chat"], HOUR.total_seconds())
    return authority


def identity(authority: certs.Authority, workload: str) -> Identity:
    return Identity(authority.bundle(workload), authority.trust_bundle)


def test_a_bundle_splits_into_its_key_and_certificate(authority):
    key, chain = tls.split_bundle(authority.bundle(GATEWAY).read_bytes())
    assert key.startswith(b"-----BEGIN PRIVATE KEY") and chain.startswith(b"-----BEGIN CERTIFICATE")
    assert x509.load_pem_x509_certificate(chain).extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value.get_values_for_type(
        x509.UniformResourceIdentifier) == ["spiffe://aimesh.local/gateway"]
    with pytest.raises(ValueError):
        tls.split_bundle(chain)                       # no key


def test_due_certificates_are_renewed_and_others_kept(authority):
    assert authority.ensure([GATEWAY, "user"], HOUR.total_seconds()) == []
    authority.issue("user", HOUR, not_before=datetime.datetime.now(datetime.UTC) - 0.7 * HOUR)
    assert authority.status("user").due
    assert authority.ensure([GATEWAY, "user"], HOUR.total_seconds()) == ["user"]
    assert not authority.status("user").due


async def test_the_api_only_to_the_gateway_health_to_anyone(authority):
    config = kit.Config(service="user", port=0, probe_port=0, certificate=str(authority.bundle("user")),
                        trust_bundle=str(authority.trust_bundle))
    server = kit.Server(config, [users_binding(Users())])
    probe = server.grpc.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async def profile(who: str) -> grpc.StatusCode:
            credentials = identity(authority, who).channel_credentials()
            async with grpc.aio.secure_channel(f"127.0.0.1:{server.port}", credentials, options=[
                    ("grpc.ssl_target_name_override", dns_name("user"))]) as channel:
                try:
                    await user_pb2_grpc.UserServiceStub(channel).GetProfile(
                        user_pb2.GetProfileRequest(), timeout=5)
                except grpc.aio.AioRpcError as refused:
                    return refused.code()
                return grpc.StatusCode.OK

        assert await profile(GATEWAY) == grpc.StatusCode.OK
        assert await profile("chat") == grpc.StatusCode.PERMISSION_DENIED
        async with grpc.aio.insecure_channel(f"127.0.0.1:{probe}") as plaintext:
            health = await health_pb2_grpc.HealthStub(plaintext).Check(
                health_pb2.HealthCheckRequest(), timeout=5)
            assert health.status == health_pb2.HealthCheckResponse.SERVING
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await user_pb2_grpc.UserServiceStub(plaintext).GetProfile(
                    user_pb2.GetProfileRequest(), timeout=5)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        await server.stop(0)


async def test_a_channel_moves_to_a_renewed_certificate(authority, monkeypatch):
    seen: list[int] = []

    async def who_called(request, context):
        pem = context.auth_context()["x509_pem_cert"][0]
        seen.append(x509.load_pem_x509_certificate(pem).serial_number)
        return user_pb2.GetProfileResponse()

    monkeypatch.setattr(tls, "admit", lambda method, context: None)   # any caller, for this test
    gateway_side = kit.Config(service="user", port=0, certificate=str(authority.bundle(GATEWAY)),
                              trust_bundle=str(authority.trust_bundle))
    server = kit.Server(gateway_side, [users_binding(Users(who_called))])
    await server.start()
    monkeypatch.setattr(clients.Renewing, "CHECK_EVERY_S", 0.0)
    channel = clients.channel(f"127.0.0.1:{server.port}", identity=identity(authority, "chat"))
    try:
        stub = user_pb2_grpc.UserServiceStub(channel)
        await stub.GetProfile(user_pb2.GetProfileRequest())
        authority.issue("chat", HOUR)
        await stub.GetProfile(user_pb2.GetProfileRequest())
        assert len(seen) == 2 and seen[0] != seen[1]     # the second call came with the new one
    finally:
        await channel.close()
        await server.stop(0)
