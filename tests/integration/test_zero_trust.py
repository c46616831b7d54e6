"""Zero trust inside the mesh: a service's own port believes identity headers only from the
gateway's certificate; the east-west listener lets a workload call only what identity.calls
allows; each service's Postgres role and NATS user reach only its own data and subjects; and
certificates rotate under load without losing a call."""
from __future__ import annotations

import asyncio
import datetime
import json
import socket
import ssl
import threading

import asyncpg
import grpc
import nats
import pytest
from cryptography import x509

from aimesh import certs, topology
from aimesh.search.v1 import search_pb2, search_pb2_grpc
from aimesh.user.v1 import user_pb2, user_pb2_grpc
from services.kit.tls import GATEWAY, Identity, dns_name
from tests import ports
from tests.conftest import TOPOLOGY
from tests.integration.client import bearer, wait_for

FORGED = [("x-aimesh-user-id", "x"), ("x-aimesh-role", "admin")]
# The issue's call, made harmless: an account that does not exist, so a call that got through
# would end NOT_FOUND instead of making someone an admin of the shared test mesh.
SET_ACCESS = user_pb2.SetAccessRequest(email="nobody-zero-trust@example.com",
                                       tier=user_pb2.TIER_PRO, role=user_pb2.ROLE_ADMIN)


TOPO = topology.load(TOPOLOGY, port_offset=ports.SESSION_MESH)
INSTANCES = {instance.name: service.name for service, instance in TOPO.instances()}


SET_ACCESS_PATH = "/aimesh.user.v1.UserService/SetAccess"


def _forged_call(channel: grpc.Channel, path: str = SET_ACCESS_PATH) -> grpc.StatusCode:
    """The issue's attack: a call with made-up identity headers (SetAccess by default) on
    whatever channel; the status it ends with."""
    request = SET_ACCESS.SerializeToString() if path == SET_ACCESS_PATH else b""
    call = channel.unary_unary(path, request_serializer=None, response_deserializer=None)
    try:
        call(request, metadata=FORGED, timeout=5)
    except grpc.RpcError as refused:
        return refused.code()
    return grpc.StatusCode.OK


def _business_method(service: str) -> str | None:
    """A method of the service's own API (catalog serves only reflection and health)."""
    methods = topology.contract_methods()
    for name in TOPO.services[service].grpc_services:
        if name in methods:
            return f"/{name}/{next(iter(methods[name]))}"
    return None


def _issued(mesh, tmp_path, workload: str, *, authority=None, expired=False) -> Identity:
    """A certificate for `workload` in a file of the test's own (the mesh's are left alone), from
    the mesh's CA or `authority`; the client trusts the mesh's CA either way (it is public), so
    any refusal is the server's."""
    authority = authority or certs.Authority(mesh.state_dir)
    lifetime = datetime.timedelta(hours=1)
    start = datetime.datetime.now(datetime.UTC) - (3 * lifetime if expired else
                                                            datetime.timedelta(minutes=1))
    bundle = authority.issue(workload, lifetime, not_before=start,
                             to=tmp_path / f"{workload}-{'expired' if expired else 'test'}.pem")
    return Identity(bundle, mesh.operator.trust)


@pytest.mark.parametrize("name", INSTANCES)
def test_the_forged_identity_call_is_refused_on_every_service_port(mesh, name):
    service = INSTANCES[name]
    instance = next(i for i in mesh.topo.services[service].instances if i.name == name)
    target = f"127.0.0.1:{instance.port}"
    with grpc.insecure_channel(target) as plaintext:
        assert _forged_call(plaintext) == grpc.StatusCode.UNAVAILABLE      # TLS only
    no_certificate = grpc.ssl_channel_credentials(mesh.operator.trust.read_bytes())
    with grpc.secure_channel(target, no_certificate, options=[
            ("grpc.ssl_target_name_override", dns_name(service))]) as anonymous:
        assert _forged_call(anonymous) == grpc.StatusCode.UNAVAILABLE      # a client cert is required
    # A valid certificate of the mesh, but not the gateway's: its headers are not believed.
    with mesh.secure_channel(target, service) as operator:
        method = _business_method(service)
        if method is None:
            assert _forged_call(operator) == grpc.StatusCode.UNIMPLEMENTED
        else:
            assert _forged_call(operator, method) == grpc.StatusCode.PERMISSION_DENIED


def test_certificates_of_another_ca_or_expired_are_refused(mesh, tmp_path):
    user = mesh.topo.services["user"].instances[0]
    target = f"127.0.0.1:{user.port}"
    stranger = _issued(mesh, tmp_path, GATEWAY, authority=certs.Authority(tmp_path / "other-ca"))
    expired = _issued(mesh, tmp_path, GATEWAY, expired=True)
    for identity in (stranger, expired):
        with mesh.secure_channel(target, "user", identity) as channel:
            assert _forged_call(channel) == grpc.StatusCode.UNAVAILABLE
    # The control: with a current gateway certificate the same call reaches the handler, which
    # believes the headers (that is the gateway's job) and finds no such account.
    gateway = _issued(mesh, tmp_path, GATEWAY)
    with mesh.secure_channel(target, "user", gateway) as channel:
        assert _forged_call(channel) == grpc.StatusCode.NOT_FOUND


def test_the_east_west_listener_refuses_and_logs_no_certificate_unknown_ca_and_expired(mesh, tmp_path):
    no_certificate = grpc.ssl_channel_credentials(mesh.operator.trust.read_bytes())
    with grpc.secure_channel(mesh.mesh_listener, no_certificate, options=[
            ("grpc.ssl_target_name_override", dns_name(GATEWAY))]) as channel:
        assert _forged_call(channel) == grpc.StatusCode.UNAVAILABLE
    stranger = _issued(mesh, tmp_path, "chat", authority=certs.Authority(tmp_path / "other-ca"))
    expired = _issued(mesh, tmp_path, "chat", expired=True)
    for identity in (stranger, expired):
        with mesh.secure_channel(mesh.mesh_listener, GATEWAY, identity) as channel:
            assert _forged_call(channel) == grpc.StatusCode.UNAVAILABLE
    log = mesh.state_dir / "logs" / "envoy-access.log"

    def refusals() -> list[dict]:
        return [line for line in map(json.loads, log.read_text().splitlines())
                if line.get("event") == "tls handshake failed"]
    reasons = ("PEER_DID_NOT_RETURN_A_CERTIFICATE", "unable_to_get_local_issuer_certificate",
               "certificate_has_expired")
    def logged(reason: str) -> bool:
        return any(reason in (line["reason"] or "") for line in refusals())
    for reason in reasons:
        wait_for(lambda reason=reason: logged(reason), timeout_s=20,
                 what=f"Envoy's log line for a refused handshake with {reason}")
    assert all(line["peer"].startswith("127.0.0.1:") for line in refusals())


def test_the_allow_list_lets_chat_search_and_nothing_else(mesh, tmp_path, bob):
    chat = Identity(certs.Authority(mesh.state_dir).bundle("chat"), mesh.operator.trust)
    with mesh.secure_channel(mesh.mesh_listener, GATEWAY, chat) as channel:
        search = search_pb2_grpc.SearchServiceStub(channel)
        found = search.Search(search_pb2.SearchRequest(query="space", page_size=2),
                              metadata=bearer(bob), timeout=10)
        assert found.results
        with pytest.raises(grpc.RpcError) as denied:          # chat may Search, not GetJob
            search.GetJob(search_pb2.GetJobRequest(job_id="x"), metadata=bearer(bob), timeout=5)
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
        users = user_pb2_grpc.UserServiceStub(channel)         # nobody reaches SetAccess east-west
        with pytest.raises(grpc.RpcError) as denied:
            users.SetAccess(SET_ACCESS, metadata=bearer(bob), timeout=5)
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_a_service_role_reads_only_its_own_schema(mesh):
    async def check():
        search = await asyncpg.connect(mesh.postgres_dsn("search"))
        try:
            assert not await search.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
            assert await search.fetchval("SELECT count(*) FROM search.documents") >= 0   # its own
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await search.fetch('SELECT * FROM "user".signing_keys')
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await search.execute("CREATE SCHEMA stolen")
        finally:
            await search.close()
        with pytest.raises((asyncpg.InvalidPasswordError, asyncpg.InvalidAuthorizationSpecificationError)):
            await asyncpg.connect(f"postgresql://postgres@127.0.0.1:{mesh.topo.infra.postgres_port}"
                                  f"/aimesh", password="guess")
    asyncio.run(check())


def test_a_service_nats_user_publishes_only_its_own_subjects(mesh):
    async def publish_as(workload: str, subject: str) -> tuple[list[str], int]:
        """(the server's errors, the JOBS stream's message count as this workload sees it)"""
        identity = Identity(certs.Authority(mesh.state_dir).bundle(workload), mesh.operator.trust)
        errors: list[str] = []

        async def noted(error):
            errors.append(str(error))
        connection = await nats.connect(f"tls://127.0.0.1:{mesh.topo.infra.nats_port}",
                                        tls=identity.ssl_context(), tls_hostname=dns_name("nats"),
                                        error_cb=noted, connect_timeout=5, allow_reconnect=False)
        try:
            jobs = (await connection.jetstream(timeout=5).stream_info("JOBS")).state.messages
            await connection.publish(subject, b"not an event")
            await connection.flush(timeout=5)
            await asyncio.sleep(0.3)        # the server's -ERR arrives after the flush's PONG
        finally:
            await connection.close()
        return errors, jobs

    async def check():
        errors, jobs = await publish_as("search", "user.registered")   # user-svc's subject
        assert any("permissions violation" in e for e in errors), errors
        assert jobs >= 0            # the control: the same user may use JetStream's API
        with pytest.raises((nats.errors.Error, OSError)):      # and nobody connects without TLS
            await nats.connect(f"nats://127.0.0.1:{mesh.topo.infra.nats_port}",
                               connect_timeout=3, allow_reconnect=False)
    asyncio.run(check())


def _served_certificate(port: int, server: str, identity: Identity) -> x509.Certificate:
    context = ssl.create_default_context(cafile=str(identity.trust))
    context.load_cert_chain(str(identity.bundle))
    context.set_alpn_protocols(["h2"])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            context.wrap_socket(raw, server_hostname=dns_name(server)) as tls:
        return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))


def test_rotation_under_load_loses_no_call(mesh, bob):
    """Four threads call through the gateway (edge -> search-svc -> east-west -> Triton, and
    user-svc) while every certificate is replaced: no call fails, and new connections get the
    new certificates from Envoy and from the services without a restart."""
    search_port = mesh.topo.services["search"].instances[0].port
    before = {"gateway": _served_certificate(mesh.topo.gateway.mesh_port, GATEWAY, mesh.operator),
              "search": _served_certificate(search_port, "search", mesh.operator)}
    stop, calls, failures = threading.Event(), [0] * 4, []

    def load(index: int) -> None:
        with mesh.channel() as channel:
            search = search_pb2_grpc.SearchServiceStub(channel)
            users = user_pb2_grpc.UserServiceStub(channel)
            while not stop.is_set():
                try:
                    if calls[index] % 2:
                        users.GetProfile(user_pb2.GetProfileRequest(), metadata=bearer(bob), timeout=10)
                    else:
                        search.Search(search_pb2.SearchRequest(query=f"rotation {index}", page_size=1),
                                      metadata=bearer(bob), timeout=10)
                except grpc.RpcError as failed:
                    failures.append(f"{failed.code()}: {failed.details()}")
                calls[index] += 1

    threads = [threading.Thread(target=load, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: sum(calls) >= 40, timeout_s=60, what="calls before the rotation")
        rotated = mesh.cli("certs", "rotate")
        assert rotated.returncode == 0, rotated.stderr
        wait_for(lambda: _served_certificate(mesh.topo.gateway.mesh_port, GATEWAY, mesh.operator)
                 .serial_number != before["gateway"].serial_number,
                 timeout_s=30, what="Envoy serving its new certificate")
        wait_for(lambda: _served_certificate(search_port, "search", mesh.operator).serial_number
                 != before["search"].serial_number, timeout_s=30,
                 what="search-svc serving its new certificate")
        after = sum(calls)
        wait_for(lambda: sum(calls) >= after + 80, timeout_s=60, what="calls after the rotation")
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    assert not failures, failures[:5]
