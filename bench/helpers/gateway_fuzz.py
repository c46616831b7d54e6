"""Hostile requests at the gateway's edge, per protocol a client may speak there: gRPC (HTTP/2),
grpc-web (HTTP/1.1) and JSON (the transcoder's google.api.http routes). For every RPC the gateway
routes: requests generated from the contracts (bench/helpers/fuzz.py's strategies) sent in each
protocol, and malformed ones no client library would send — garbage that is no gRPC frame, a
frame cut short or claiming more bytes than follow, a compressed flag with no encoding, two
messages for a unary call, wrong content types, base64 that is not, JSON that is not, of the wrong
shape or nested without end.

Every answer must be a clear one: an HTTP status under 500, and a gRPC status (header, trailer or
grpc-web trailer frame) that is neither INTERNAL nor UNKNOWN; an INVALID_ARGUMENT from a service
names its field. Sent with a real token (the caller's tier and limits apply), from a client
address of its own so per-address limits stay apart from other callers'.

Used by tests/chaos/test_gateway_fuzz.py (a short run on the tests' mesh) and `bin/aimesh bench
fuzz --gateway` (the long run on a mesh of its own)."""
from __future__ import annotations

import base64
import collections
import http.client
import random
import socket
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass

import h2.config
import h2.connection
import h2.events
import h2.exceptions
from google.api import annotations_pb2, http_pb2
from google.protobuf import json_format, message_factory
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from hypothesis import HealthCheck, given, seed, settings

from bench.helpers import fuzz

CRASHES = (2, 13)            # UNKNOWN, INTERNAL
INVALID_ARGUMENT = 3
TIMEOUT_S = 30
STREAM_S = 1                 # server streams are cut by their deadline here (Subscribe is live)
SOURCE = "127.0.0.77"        # the fuzzer's own client address


@dataclass(frozen=True)
class Answer:
    http: int                # the HTTP status (200 for any gRPC answer)
    grpc: int | None         # the gRPC status, when the answer carries one
    message: str = ""
    details: bytes = b""     # grpc-status-details-bin, decoded

    def problem(self, tolerated: frozenset[int] = frozenset()) -> str:
        """Why this answer is not a clear one ("" when it is)."""
        if self.http >= 500:
            return f"HTTP {self.http} {self.message[:200]}"
        if self.grpc in CRASHES and self.grpc not in tolerated:
            return f"gRPC status {self.grpc} {self.message[:200]}"
        if self.grpc == INVALID_ARGUMENT and self.details and not _names_a_field(self.details):
            return f"INVALID_ARGUMENT naming no field: {self.message[:200]}"
        if self.http == 200 and self.grpc is None:
            return "an answer with no gRPC status"
        return ""

    @property
    def outcome(self) -> str:
        return f"grpc {self.grpc}" if self.grpc is not None else f"http {self.http}"


def _names_a_field(details: bytes) -> bool:
    status = status_pb2.Status.FromString(details)
    for detail in status.details:
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad) and any(v.field for v in bad.field_violations):
            return True
    return False


def frame(payload: bytes, flag: int = 0) -> bytes:
    return bytes([flag]) + len(payload).to_bytes(4, "big") + payload


class H2:
    """One plaintext HTTP/2 connection (prior knowledge, as gRPC clients speak to the edge) that
    sends each request exactly as given: headers and body bytes, frames or not."""

    def __init__(self, address: str):
        self.host, port = address.rsplit(":", 1)
        self.port = int(port)
        self.socket: socket.socket | None = None

    def _connect(self) -> None:
        self.socket = socket.create_connection((self.host, self.port), timeout=TIMEOUT_S,
                                               source_address=(SOURCE, 0))
        self.connection = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=True, header_encoding="utf-8"))
        self.connection.initiate_connection()
        self._flush()

    def _flush(self) -> None:
        assert self.socket is not None
        self.socket.sendall(self.connection.data_to_send())

    def close(self) -> None:
        if self.socket is not None:
            self.socket.close()
            self.socket = None

    def post(self, path: str, headers: dict[str, str], body: bytes) -> Answer:
        if self.socket is None:
            self._connect()
        try:
            return self._post(path, headers, body)
        except (OSError, h2.exceptions.ProtocolError) as broken:
            self.close()      # the next request gets a new connection
            return Answer(599, None, f"connection broken: {broken!r}")

    def _post(self, path: str, headers: dict[str, str], body: bytes) -> Answer:
        stream = self.connection.get_next_available_stream_id()
        self.connection.send_headers(stream, [(":method", "POST"), (":scheme", "http"),
                                              (":authority", f"{self.host}:{self.port}"), (":path", path),
                                              *headers.items()])
        got: dict[str, str] = {}
        ended, sent = False, 0
        while sent < len(body) and not ended:
            room = min(self.connection.local_flow_control_window(stream), len(body) - sent,
                       self.connection.max_outbound_frame_size)
            if room > 0:
                self.connection.send_data(stream, body[sent:sent + room])
                sent += room
                self._flush()
            else:                      # wait for the peer to open its window (or to answer)
                ended = self._read(stream, got)
        if not ended:
            self.connection.end_stream(stream)
            self._flush()
        while not ended:
            ended = self._read(stream, got)
        if ended == "reset":
            self.close()
            return Answer(599, None, f"stream reset: {got.get('reset')}")
        status = got.get("grpc-status")
        details = got.get("grpc-status-details-bin", "")
        return Answer(int(got.get(":status", "0")), int(status) if status is not None else None,
                      urllib.parse.unquote(got.get("grpc-message", "")) or got.get("body", ""),
                      base64.b64decode(details + "=" * (-len(details) % 4)) if details else b"")

    def _read(self, stream: int, got: dict[str, str]) -> bool | str:
        assert self.socket is not None
        data = self.socket.recv(65536)
        if not data:
            raise OSError("connection closed")
        ended: bool | str = False
        for event in self.connection.receive_data(data):
            if getattr(event, "stream_id", stream) != stream:
                continue
            if isinstance(event, (h2.events.ResponseReceived, h2.events.TrailersReceived)):
                got.update(event.headers)
            elif isinstance(event, h2.events.DataReceived):
                self.connection.acknowledge_received_data(event.flow_controlled_length, stream)
                got["body"] = got.get("body", "") + event.data[:200].decode("utf-8", "replace")
            elif isinstance(event, h2.events.StreamEnded):
                ended = True
            elif isinstance(event, h2.events.StreamReset):
                got["reset"] = str(event.error_code)
                ended = "reset"
            elif isinstance(event, h2.events.ConnectionTerminated):
                raise OSError(f"GOAWAY {event.error_code}")
        self._flush()
        return ended


def http1(address: str, method: str, path: str, headers: dict[str, str], body: bytes) -> Answer:
    """One HTTP/1.1 request (grpc-web, JSON); a grpc-web answer's status from its trailer frame."""
    host, port = address.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=TIMEOUT_S, source_address=(SOURCE, 0))
    try:
        connection.request(method, path, body=None if method in ("GET", "DELETE") else body, headers=headers)
        response = connection.getresponse()
        reply = response.read()
        got = {k.lower(): v for k, v in response.getheaders()}
    except (OSError, http.client.HTTPException) as broken:
        return Answer(599, None, f"connection broken: {broken!r}")
    finally:
        connection.close()
    if got.get("content-type", "").startswith("application/grpc-web"):
        while len(reply) >= 5:
            flag, length = reply[0], int.from_bytes(reply[1:5], "big")
            if flag & 0x80:
                got.update(line.split(":", 1) for line in reply[5:5 + length].decode().strip().split("\r\n")
                           if ":" in line)
            reply = reply[5 + length:]
        got = {k.strip().lower(): v.strip() for k, v in got.items()}
    status = got.get("grpc-status")
    details = got.get("grpc-status-details-bin", "")
    return Answer(response.status, int(status) if status is not None else None,
                  urllib.parse.unquote(got.get("grpc-message", "")) or reply[:200].decode("utf-8", "replace"),
                  base64.b64decode(details + "=" * (-len(details) % 4)) if details else b"")


def http_rule(rpc: fuzz.Rpc) -> tuple[str, str, str] | None:
    """The RPC's JSON route (method, path template, body), from its google.api.http option."""
    for method in rpc.request.file.pool.FindServiceByName(rpc.path.split("/")[1]).methods:
        if method.name == rpc.path.rsplit("/", 1)[1]:
            options = method.GetOptions()
            if not options.HasExtension(annotations_pb2.http):
                return None
            rule: http_pb2.HttpRule = options.Extensions[annotations_pb2.http]
            kind = rule.WhichOneof("pattern")
            return kind.upper(), getattr(rule, kind), rule.body
    return None


def _json_path(template: str, message: Message) -> str:
    """The path with each {field} replaced by the message's value (escaped)."""
    path = template
    for field in message.DESCRIPTOR.fields:
        path = path.replace("{" + field.name + "}", urllib.parse.quote(str(getattr(message, field.name)), safe=""))
    return path


class Gateway:
    """Sends one request to the edge in a protocol; answers as Answer."""

    def __init__(self, address: str, token: str):
        self.address, self.token = address, token
        self.h2 = H2(address)

    def close(self) -> None:
        self.h2.close()

    def headers(self, rpc: fuzz.Rpc, content_type: str) -> dict[str, str]:
        timeout = f"{STREAM_S}S" if rpc.server_streaming else f"{TIMEOUT_S}S"
        return {"content-type": content_type, "te": "trailers", "grpc-timeout": timeout,
                "authorization": f"Bearer {self.token}"}

    def grpc(self, rpc: fuzz.Rpc, body: bytes, content_type: str = "application/grpc") -> Answer:
        return self.h2.post(rpc.path, self.headers(rpc, content_type), body)

    def grpc_web(self, rpc: fuzz.Rpc, body: bytes, content_type: str = "application/grpc-web+proto") -> Answer:
        headers = {**self.headers(rpc, content_type), "x-grpc-web": "1"}
        del headers["te"]
        return http1(self.address, "POST", rpc.path, headers, body)

    def json(self, rpc: fuzz.Rpc, message: Message | None, body: bytes | None = None,
             content_type: str = "application/json") -> Answer | None:
        rule = http_rule(rpc)
        if rule is None:
            return None
        method, template, _ = rule
        path = _json_path(template, message or message_factory.GetMessageClass(rpc.request)())
        if body is None:
            body = json_format.MessageToJson(message).encode() if message is not None else b"{}"
        headers = {"content-type": content_type, "authorization": f"Bearer {self.token}",
                   "grpc-timeout": f"{STREAM_S if rpc.server_streaming else TIMEOUT_S}S"}
        return http1(self.address, method, path, headers, body)


@dataclass(frozen=True)
class Case:
    protocol: str
    name: str
    send: Callable[[Gateway], Answer | None]
    tolerated: frozenset[int] = frozenset()    # crash statuses a protocol's own spec gives this case


# A client stream passes the gateway as it comes, so only the services' gRPC library reads its
# frames: a message flagged compressed with no grpc-encoding is INTERNAL there, as gRPC's
# compression spec has it. (A one-message request is checked at the edge: INVALID_ARGUMENT.)
SPEC_INTERNAL = frozenset({13})


def malformed(rpc: fuzz.Rpc) -> list[Case]:
    """Every hand-made hostile request to this RPC."""
    noise = random.Random(fuzz.SEED).randbytes(300)
    empty = message_factory.GetMessageClass(rpc.request)().SerializeToString()
    frames = {
        "garbage, no frame": noise,
        "a frame cut short": frame(b"x" * 40)[:20],
        "a length past the body": b"\0" + (2**31 - 1).to_bytes(4, "big") + noise[:10],
        "compressed, no encoding": frame(noise[:20], flag=1),
        "two messages": frame(empty) + frame(empty),
        "no body": b"",
        "the trailer flag": frame(noise[:20], flag=0x80),
    }
    cases: list[Case] = []
    for name, body in frames.items():
        tolerated = SPEC_INTERNAL if rpc.client_streaming and name == "compressed, no encoding" else frozenset()
        cases.append(Case("grpc", name, lambda g, b=body: g.grpc(rpc, b), tolerated))
        cases.append(Case("grpc-web", name, lambda g, b=body: g.grpc_web(rpc, b), tolerated))
    for content_type in ("application/json", "text/plain", "application/grpc+json"):
        cases.append(Case("grpc", f"content type {content_type}",
                          lambda g, c=content_type: g.grpc(rpc, frame(empty), c)))
    cases.append(Case("grpc-web", "base64 that is not",
                      lambda g: g.grpc_web(rpc, b"!!not base64!!", "application/grpc-web-text")))
    cases.append(Case("grpc-web", "content type text/plain", lambda g: g.grpc_web(rpc, frame(empty), "text/plain")))
    for name, body in {"not JSON": b"{", "an array": b"[]", "a string": b'"x"', "unknown field": b'{"no_such": 1}',
                       "nested without end": b'{"a":' * 5000 + b"1" + b"}" * 5000,
                       "a number past any type": b'{"' + _first_field(rpc).encode() + b'": 1e400}',
                       "wrong type": b'{"' + _first_field(rpc).encode() + b'": {"x": [true]}}'}.items():
        cases.append(Case("json", name, lambda g, b=body: g.json(rpc, None, b)))
    cases.append(Case("json", "content type text/plain", lambda g: g.json(rpc, None, b"{}", "text/plain")))
    return cases


def _first_field(rpc: fuzz.Rpc) -> str:
    return rpc.request.fields[0].json_name if rpc.request.fields else "x"


Outcomes = collections.Counter


def run_malformed(rpc: fuzz.Rpc, gateway: Gateway, outcomes: Outcomes) -> list[str]:
    """Every hand-made case once; the problems found (empty when every answer was clear)."""
    problems = []
    for case in malformed(rpc):
        answer = case.send(gateway)
        if answer is None:          # no JSON route for this RPC
            continue
        outcomes[rpc.path, case.protocol, answer.outcome] += 1
        if problem := answer.problem(case.tolerated):
            problems.append(f"{case.protocol} {rpc.path} [{case.name}]: {problem}")
    return problems


def run_generated(rpc: fuzz.Rpc, gateway: Gateway, examples: int, outcomes: Outcomes) -> list[str]:
    """`examples` requests generated from the contract (a fixed seed), each sent in every protocol."""
    problems: list[str] = []

    @seed(fuzz.SEED)
    @settings(max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(fuzz.messages(rpc.request))
    def one(request: Message) -> None:
        body = request.SerializeToString()
        sent: dict[str, Answer | None] = {"grpc": gateway.grpc(rpc, frame(body)),
                                          "grpc-web": gateway.grpc_web(rpc, frame(body)),
                                          "json": gateway.json(rpc, request)}
        for protocol, answer in sent.items():
            if answer is None:
                continue
            outcomes[rpc.path, protocol, answer.outcome] += 1
            if problem := answer.problem():
                problems.append(f"{protocol} {rpc.path}: {problem} (request: {str(request)[:300]!r})")
    one()
    return problems


def report(outcomes: Outcomes) -> str:
    by: dict[tuple[str, str], dict[str, int]] = collections.defaultdict(dict)
    for (path, protocol, outcome), count in sorted(outcomes.items()):
        by[path, protocol][outcome] = count
    return "\n".join(f"  {path:<55} {protocol:<9} " + ", ".join(f"{o} x{n}" for o, n in found.items())
                     for (path, protocol), found in by.items())


def summary(outcomes: Outcomes) -> str:
    total = sum(outcomes.values())
    per_protocol = collections.Counter()
    for (_, protocol, _), n in outcomes.items():
        per_protocol[protocol] += n
    return f"{total} requests: " + ", ".join(f"{p} {n}" for p, n in sorted(per_protocol.items()))

