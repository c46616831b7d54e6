"""Hostile input through the gateway, as a client sends it: bytes that are not the request
message, a NUL character in a text field, calls without a token to every RPC that needs one,
forged tokens, messages past the size limit, and a stream client that never reads."""
import base64
import hashlib
import hmac
import json
import socket
import time
import urllib.error
import urllib.request
import uuid

import grpc
import h2.config
import h2.connection
import h2.events
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from aimesh import topology
from aimesh.notify.v1 import notify_pb2, notify_pb2_grpc
from aimesh.search.v1 import search_pb2, search_pb2_grpc
from aimesh.user.v1 import user_pb2
from bench.helpers import fuzz, gateway_fuzz
from services import kit
from services.kit.identity import ROLE_HEADER, TIER_HEADER, USER_ID_HEADER
from tests.integration.client import bearer, grpc_web


def test_a_body_that_is_not_the_message_is_invalid_argument(mesh, alice):
    with mesh.channel() as channel:
        garbage = channel.unary_unary("/aimesh.user.v1.UserService/GetProfile",
                                      request_serializer=None, response_deserializer=None)
        with pytest.raises(grpc.RpcError) as refused:
            garbage(b"\xff\xff\xff\xff not protobuf", metadata=bearer(alice), timeout=5)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert list(kit.field_violations(refused.value)) == ["request"]


def test_a_nul_in_a_display_name_is_invalid_argument_naming_it(mesh, users, alice):
    with pytest.raises(grpc.RpcError) as refused:
        users.UpdateProfile(user_pb2.UpdateProfileRequest(display_name="Al\x00ice"),
                            metadata=bearer(alice), timeout=5)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert list(kit.field_violations(refused.value)) == ["display_name"]


# Found by the fuzzer (tests/chaos/test_fuzz.py): NUL in a document's fields or in a search
# filter came back INTERNAL (Postgres's text and jsonb hold no NUL).
@pytest.mark.parametrize("document, field", [
    (search_pb2.Document(document_id="\x00", text="x"), "documents[0].document_id"),
    (search_pb2.Document(document_id="d", text="a\x00b"), "documents[0].text"),
    (search_pb2.Document(document_id="d", title="\x00", text="x"), "documents[0].title"),
    (search_pb2.Document(document_id="d", text="x", metadata={"\x00": "v"}), "documents[0].metadata (a key)"),
])
def test_a_nul_in_a_document_is_invalid_argument_naming_the_field(mesh, admin, document, field):
    with mesh.channel() as channel, pytest.raises(grpc.RpcError) as refused:
        search_pb2_grpc.SearchServiceStub(channel).IndexDocuments(
            search_pb2.IndexDocumentsRequest(documents=[document]), metadata=bearer(admin), timeout=10)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert list(kit.field_violations(refused.value)) == [field]


def test_a_nul_in_a_search_filter_is_invalid_argument_naming_it(mesh, alice):
    with mesh.channel() as channel, pytest.raises(grpc.RpcError) as refused:
        search_pb2_grpc.SearchServiceStub(channel).Search(
            search_pb2.SearchRequest(query="film", filters={"genre": "a\x00"}),
            metadata=bearer(alice), timeout=10)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert list(kit.field_violations(refused.value)) == ["filters[genre]"]


def test_a_page_token_no_response_gave_is_invalid_argument_naming_it(mesh, alice):
    """Found by the fuzzer: a 40-digit page token overflowed Postgres's OFFSET (INTERNAL)."""
    with mesh.channel() as channel:
        calls = [lambda t: notify_pb2_grpc.NotificationServiceStub(channel).ListNotifications(
                     notify_pb2.ListNotificationsRequest(page_token=t), metadata=bearer(alice), timeout=10),
                 lambda t: search_pb2_grpc.SearchServiceStub(channel).Search(
                     search_pb2.SearchRequest(query="film", page_token=t), metadata=bearer(alice), timeout=10)]
        for call in calls:
            for bad in ("9" * 40, "١٢", "-1"):      # huge, non-ASCII digits, signed
                with pytest.raises(grpc.RpcError) as refused:
                    call(bad)
                assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert list(kit.field_violations(refused.value)) == ["page_token"]


def _token_needing_methods(mesh) -> list[str]:
    """Every RPC the edge routes that needs a token: from the contracts and the topology's
    `public`, so a new RPC is covered without an edit here."""
    methods = topology.contract_methods()
    paths = []
    for service in mesh.topo.services.values():
        if "*" in service.public:
            continue
        for grpc_service in service.grpc_services:
            paths += [f"/{grpc_service}/{m}" for m in methods.get(grpc_service, {})
                      if m not in service.public]
    return paths


def test_every_rpc_that_needs_a_token_is_refused_without_one(mesh):
    paths = _token_needing_methods(mesh)
    assert len(paths) >= 15
    with mesh.channel() as channel:
        for path in paths:
            call = channel.unary_unary(path, request_serializer=None, response_deserializer=None)
            with pytest.raises(grpc.RpcError) as refused:
                call(b"", timeout=5)     # a stream answers the same, before its first message
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED, path


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _hs256(claims: dict, secret: bytes, *, kid: str) -> str:
    """By hand: PyJWT rightly refuses to HMAC with a public key."""
    signed = f"{_b64(json.dumps({'alg': 'HS256', 'typ': 'JWT', 'kid': kid}).encode())}." \
             f"{_b64(json.dumps(claims).encode())}"
    return f"{signed}.{_b64(hmac.new(secret, signed.encode(), hashlib.sha256).digest())}"


def _public_pem(mesh) -> bytes:
    _, key = mesh.signing_key()
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


@pytest.mark.parametrize("forgery", ["alg none", "HS256 with the public key", "unknown kid",
                                     "wrong audience", "wrong issuer", "not yet valid"])
def test_forged_tokens_are_refused(mesh, users, forgery):
    claims = {"sub": "00000000-0000-0000-0000-000000000001", "tier": "pro", "role": "admin",
              "iss": mesh.topo.gateway.issuer, "aud": mesh.topo.gateway.audience,
              "iat": int(time.time()), "exp": int(time.time()) + 600}
    if forgery == "alg none":
        forged = jwt.encode(claims, None, algorithm="none")
    elif forgery == "HS256 with the public key":
        # the classic confusion: a verifier that takes the key's bytes as an HMAC secret
        forged = _hs256(claims, _public_pem(mesh), kid=mesh.signing_key()[0])
    elif forgery == "unknown kid":
        forged = mesh.token(kid="no-such-key")
    elif forgery == "wrong audience":
        forged = mesh.token(aud="someone-else")
    elif forgery == "wrong issuer":
        forged = mesh.token(iss="someone-else")
    else:
        forged = mesh.token(nbf=int(time.time()) + 3600)
    with pytest.raises(grpc.RpcError) as refused:
        users.GetProfile(user_pb2.GetProfileRequest(), metadata=bearer(forged), timeout=5)
    # Envoy's jwt_authn answers a token it verified but whose audience is another's with 403
    expected = (grpc.StatusCode.PERMISSION_DENIED if forgery == "wrong audience"
                else grpc.StatusCode.UNAUTHENTICATED)
    assert refused.value.code() == expected


def test_a_message_over_the_limit_is_refused_by_the_gateway_in_every_protocol(mesh, users, alice):
    """4 MiB (the kit's max_message_bytes, which the gateway reads whole requests up to): gRPC and
    grpc-web get RESOURCE_EXHAUSTED, JSON HTTP 413, and the next call is answered as before."""
    big = user_pb2.UpdateProfileRequest(display_name="x" * (5 << 20))
    with pytest.raises(grpc.RpcError) as refused:
        users.UpdateProfile(big, metadata=bearer(alice), timeout=10)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    web = grpc_web(mesh.gateway, "/aimesh.user.v1.UserService/UpdateProfile", big,
                   user_pb2.UpdateProfileResponse, metadata=bearer(alice))
    assert web.status == grpc.StatusCode.RESOURCE_EXHAUSTED
    request = urllib.request.Request(f"http://{mesh.gateway}/v1/profile", method="PATCH",
                                     data=json.dumps({"displayName": big.display_name}).encode(),
                                     headers={"content-type": "application/json", **dict(bearer(alice))})
    with pytest.raises(urllib.error.HTTPError) as too_large:
        urllib.request.urlopen(request, timeout=10)
    assert too_large.value.code == 413
    profile = users.GetProfile(user_pb2.GetProfileRequest(), metadata=bearer(alice), timeout=5)
    assert profile.profile.email == "alice@demo.aimesh"


def test_behind_the_gateway_the_service_refuses_the_same_size(mesh):
    """The service's own limit stands for a caller that reaches its port some other way."""
    instance = mesh.topo.services["user"].instances[0].name
    with mesh.direct(instance, "user") as channel:
        update = channel.unary_unary("/aimesh.user.v1.UserService/UpdateProfile",
                                     request_serializer=user_pb2.UpdateProfileRequest.SerializeToString)
        with pytest.raises(grpc.RpcError) as refused:
            update(user_pb2.UpdateProfileRequest(display_name="x" * (5 << 20)), timeout=10,
                   metadata=[(USER_ID_HEADER, str(uuid.uuid4())), (TIER_HEADER, "free"),
                             (ROLE_HEADER, "user")])
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_a_request_that_is_not_one_grpc_message_is_refused_at_the_edge(mesh, alice):
    """A frame cut short, a compressed flag with no encoding, two messages for a unary call: the
    gateway refuses them naming `request` (a service would answer INTERNAL, or wait for the rest
    until the deadline). The gateway's fuzzing (tests/chaos/test_gateway_fuzz.py) tries more."""
    profile = next(r for r in fuzz.rpcs(mesh.topo) if r.path.endswith("/GetProfile"))
    sender = gateway_fuzz.Gateway(mesh.gateway, alice)
    try:
        frame = gateway_fuzz.frame
        for body in (frame(b"x" * 40)[:20], frame(b"", flag=1), frame(b"") + frame(b"")):
            answer = sender.grpc(profile, body)
            assert (answer.grpc, answer.message.split(":")[0]) == (3, "request"), answer
    finally:
        sender.close()


def _ask_without_reading(gateway: str, path: str, frame: bytes, stalled_s: float = 3) -> int:
    """On one HTTP/2 stream, send `frame` as often as flow control lets us and never read an
    answer (our window stays shut); stop once nobody has opened our send window for `stalled_s`.
    Returns how many were sent."""
    host, port = gateway.rsplit(":", 1)
    connection = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    with socket.create_connection((host, int(port)), timeout=stalled_s) as peer:
        connection.initiate_connection()
        stream = connection.get_next_available_stream_id()
        connection.send_headers(stream, [(":method", "POST"), (":scheme", "http"), (":authority", gateway),
                                         (":path", path), ("content-type", "application/grpc"),
                                         ("te", "trailers")])
        peer.sendall(connection.data_to_send())
        sent, deadline = 0, time.monotonic() + 60
        while time.monotonic() < deadline:
            fits = min(connection.local_flow_control_window(stream), connection.max_outbound_frame_size)
            if fits >= len(frame):
                connection.send_data(stream, frame * (fits // len(frame)))
                sent += fits // len(frame)
            else:
                try:
                    data = peer.recv(65536)
                except TimeoutError:
                    return sent
                assert data, "the gateway closed the connection"
                for event in connection.receive_data(data):   # data is never acknowledged
                    assert not isinstance(event, (h2.events.StreamReset, h2.events.ConnectionTerminated)), event
            peer.sendall(connection.data_to_send())
    raise AssertionError(f"the gateway took {sent} requests in 60 s and still asked for more")


def test_a_stream_client_that_never_reads_costs_the_servers_a_window_not_what_it_asked(mesh):
    """A bidi stream (reflection, public) asked for hundreds of MiB of answers by a client that
    never reads them: flow control stops the client, and the catalog and Envoy hold about what
    the HTTP/2 windows hold, not the answers asked for. The catalog answers normally afterwards."""
    request = reflection_pb2.ServerReflectionRequest(file_containing_symbol="aimesh.chat.v1.ChatService")
    with mesh.channel() as channel:
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        answer_bytes = next(reflection.ServerReflectionInfo(iter([request]), timeout=5)).ByteSize()
    processes = mesh.processes()

    def rss_mib(name: str) -> float:
        return sum(p.memory_info().rss for p in processes[name]) / 2**20

    before = {name: rss_mib(name) for name in ("catalog", "envoy")}
    sent = _ask_without_reading(mesh.gateway, "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
                                gateway_fuzz.frame(request.SerializeToString()))
    grown = {name: rss_mib(name) - before[name] for name in before}
    asked_mib = sent * answer_bytes / 2**20
    assert asked_mib > 4 * 32, f"only {asked_mib:.0f} MiB asked: the test proves nothing"
    assert all(mib < 32 for mib in grown.values()), (grown, f"{asked_mib:.0f} MiB asked")
    with mesh.channel() as channel:
        again = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(iter([request]), timeout=5)
        assert next(again).file_descriptor_response.file_descriptor_proto
