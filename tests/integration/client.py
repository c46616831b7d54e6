"""Client-side test tools: forged keys, polling with a bound, status codes,
grpc-web calls framed by hand."""
from __future__ import annotations

import asyncio
import http.client
import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import asyncpg
import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from aimesh.user.v1 import user_pb2, user_pb2_grpc


def bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


def stored(mesh, query: str, *args):
    """The first row of a query on the mesh's Postgres: what a service stored and no call shows
    (tests only)."""
    async def first_row():
        connection = await asyncpg.connect(mesh.postgres_dsn())
        try:
            return await connection.fetchrow(query, *args)
        finally:
            await connection.close()
    return asyncio.run(first_row())


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


@dataclass
class WebReply:
    status: grpc.StatusCode
    message: object | None          # the decoded response message, when there was one
    headers: dict[str, str]


def grpc_web(address: str, method: str, request, response_type, *, metadata=(),
             source: str = "127.0.0.1", origin: str | None = None, timeout: float = 10) -> WebReply:
    """One grpc-web call the way a browser makes it: an HTTP/1.1 POST whose body is the message
    framed by hand (a flag byte, then the length in 4 bytes big-endian); the answer is message
    frames and a trailer frame (flag 0x80) carrying grpc-status. `source` picks the client
    address (any 127.x.y.z), so per-address limits can be tested apart from other tests."""
    host, port = address.rsplit(":", 1)
    payload = request.SerializeToString()
    headers = {"content-type": "application/grpc-web+proto", "x-grpc-web": "1", **dict(metadata)}
    if origin:
        headers["origin"] = origin
    connection = http.client.HTTPConnection(host, int(port), timeout=timeout, source_address=(source, 0))
    try:
        connection.request("POST", method, b"\0" + len(payload).to_bytes(4, "big") + payload, headers)
        response = connection.getresponse()
        body = response.read()
        reply_headers = {k.lower(): v for k, v in response.getheaders()}
    finally:
        connection.close()
    message, trailers = None, dict(reply_headers)    # a trailers-only answer has them as headers
    while body:
        flag, length = body[0], int.from_bytes(body[1:5], "big")
        frame, body = body[5:5 + length], body[5 + length:]
        if flag & 0x80:
            trailers.update(line.split(":", 1) for line in frame.decode().strip().split("\r\n") if line)
        else:
            message = response_type.FromString(frame)
    code = int(trailers.get("grpc-status", grpc.StatusCode.UNKNOWN.value[0]))
    status = next(s for s in grpc.StatusCode if s.value[0] == code)
    return WebReply(status, message, reply_headers)


def next_of_kind(live, kind: str):
    """The next notification of `kind` from a Subscribe stream (bounded by the stream's own
    deadline). Others are skipped: the welcome for a new account may still arrive live, since
    events are relayed from the outbox just after the change commits."""
    for reply in live:
        if reply.notification.kind == kind:
            return reply.notification
    raise AssertionError(f"the stream ended before a {kind} notification")


class Writes:
    """One kind of write through the gateway every `pace_s` on a thread of its own, while a test
    breaks something. `write(channel, n)` makes the n-th call and returns its key: which keys were
    tried and acknowledged, and the status of each call that failed."""

    def __init__(self, mesh, write: Callable[[grpc.Channel, int], object], pace_s: float = 0.25):
        self.mesh, self.write, self.pace_s = mesh, write, pace_s
        self.tried: list = []
        self.acknowledged: list = []
        self.failures: list[grpc.StatusCode] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        with self.mesh.channel() as channel:
            n = 0
            while not self._stop.is_set():
                n += 1
                try:
                    self.acknowledged.append(self.write(channel, n))
                except grpc.RpcError as failed:
                    self.failures.append(failed.code())
                self.tried.append(n)
                time.sleep(self.pace_s)

    def __enter__(self) -> Writes:
        self._thread.start()
        return self

    def __exit__(self, *_) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def purchases(mesh, token: str, pace_s: float = 0.25) -> Writes:   # 4 a second: under the free tier
    """Purchases of items 1, 2, 3, ... by the token's user; the key is the item id."""
    def purchase(channel: grpc.Channel, item: int) -> int:
        user_pb2_grpc.UserServiceStub(channel).RecordPurchase(
            user_pb2.RecordPurchaseRequest(item_id=item), metadata=bearer(token), timeout=5)
        return item
    return Writes(mesh, purchase, pace_s)


def recommender_breakers_closed(mesh, token: str) -> None:
    """Wait until each recommend version answers from the model again: a breaker a test opened
    (by a Triton fault) has had its probe succeed, so no later test meets it open or half-open."""
    from aimesh.common.v1 import common_pb2
    from aimesh.recommend.v1 import recommend_pb2, recommend_pb2_grpc
    with mesh.channel() as channel:
        stub = recommend_pb2_grpc.RecommendServiceStub(channel)
        for version in ("v1", "v2"):
            def from_the_model(version=version) -> bool:
                request = recommend_pb2.RecommendRequest(limit=3, exclude_item_ids=[random.randint(10**6, 10**9)])
                reply = stub.Recommend(request, metadata=bearer(token) + [("x-model-version", version)], timeout=10)
                return reply.source == common_pb2.SOURCE_MODEL
            wait_for(from_the_model, timeout_s=30, interval_s=0.5, what=f"recommend {version}'s breaker to close")
