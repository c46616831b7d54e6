"""Every service's handlers in this process, for fuzzing them: each service's own `setup` (so its
stores, clients and background work are the ones it runs with) on a test database — schemas of
their own, `inproc_<service>`, on the mesh's Postgres, dropped first — and a NATS of their own
(started here with the mesh's configuration, so their events reach no consumer of the mesh);
models and other services are the mesh's own, called through its east-west listener with each
service's certificate.

A call goes as a gRPC server would run it, less the transport: the request's bytes through the
method's deserializer and the kit's interceptor (admission, error mapping, the access log) to the
handler, with a context that carries the gateway's certificate and the caller's headers. Its
outcome is the status the call ended with; a handler's unhandled error keeps its traceback."""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib
import json
import logging
import shutil
import socket
import threading
import time
import traceback
from collections.abc import AsyncIterator
from concurrent.futures import Future

import asyncpg
import grpc
from google.rpc import error_details_pb2, status_pb2

from aimesh import infra, services
from aimesh.component import Component, http_ok
from aimesh.harness import MeshUnderTest
from aimesh.paths import venv_bin
from aimesh.supervisor import Supervisor
from services import kit
from services.kit.interceptors import Observe
from services.kit.tls import GATEWAY, SPIFFE_PROPERTY, admit, spiffe_id

SCHEMA_PREFIX = "inproc_"
CRASHES = (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)


@dataclasses.dataclass
class Outcome:
    code: grpc.StatusCode
    details: str = ""
    fields: dict[str, str] = dataclasses.field(default_factory=dict)   # BadRequest's violations
    crash: str = ""                   # the traceback of an unhandled error
    answers: list = dataclasses.field(default_factory=list)


class Services:
    """The topology's services, set up in this process on a background event loop. `call` is
    thread-safe and blocking; `close` stops everything it started."""

    def __init__(self, mesh: MeshUnderTest, names: list[str]):
        self.mesh = mesh
        self.home = mesh.state / "inprocess"
        shutil.rmtree(self.home, ignore_errors=True)
        self.supervisor = Supervisor(self.home)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="in-process services",
                                       daemon=True)
        self.thread.start()
        self.apps: list[kit.App] = []
        self.handlers: dict[str, grpc.RpcMethodHandler] = {}    # by path: /package.Service/Method
        self.errors = _Errors()   # what the services logged as errors (their background work's too)
        logging.getLogger("aimesh").addHandler(self.errors)
        self.access_log = logging.getLogger("aimesh.rpc")   # a line a call: not for a fuzzing run
        self.access_level = self.access_log.level
        self.access_log.setLevel(logging.WARNING)
        try:
            self.nats_url = self._start_nats()
            self._run(self._drop_schemas()).result()
            for name in names:
                self._run(self._set_up(name)).result()
        except BaseException:
            self.close()
            raise

    def _start_nats(self) -> str:
        """A nats-server with the mesh's configuration (its TLS and per-workload permissions)
        on free ports and a store of its own."""
        topo = self.mesh.topo
        store = self.home / "nats"
        store.mkdir(parents=True)
        config = infra.nats_config(topo, str(store), infra.nats_tls(topo, self.mesh.state))
        port, monitor = _free_port(), _free_port()
        config["listen"], config["http"] = f"127.0.0.1:{port}", f"127.0.0.1:{monitor}"
        (self.home / "nats.conf").write_text(json.dumps(config, indent=1))
        component = Component(name="nats", argv=[venv_bin("nats-server"), "-c", str(self.home / "nats.conf")],
                              healthy=lambda: http_ok(f"http://127.0.0.1:{monitor}/healthz?js-enabled-only=true"),
                              start_timeout_s=20, stop_timeout_s=5)
        self.supervisor.start(component)
        self.supervisor.wait_healthy([component])
        return f"{'tls' if topo.identity.mtls else 'nats'}://127.0.0.1:{port}"

    def _run(self, work) -> Future:
        return asyncio.run_coroutine_threadsafe(work, self.loop)

    async def _drop_schemas(self) -> None:
        connection = await asyncpg.connect(self.mesh.postgres_dsn())
        try:
            for (schema,) in await connection.fetch(
                    "SELECT nspname FROM pg_namespace WHERE nspname LIKE $1", SCHEMA_PREFIX + "%"):
                await connection.execute(f'DROP SCHEMA "{schema}" CASCADE')
        finally:
            await connection.close()

    async def _set_up(self, name: str) -> None:
        topo = self.mesh.topo
        service = topo.services[name]
        config = dataclasses.replace(
            services.config(topo, service, service.instances[0], self.mesh.state, demo=False),
            instance=f"{name}-inprocess", port=0, metrics_port=0, probe_port=0, jwks_port=0,
            postgres_dsn=self.mesh.postgres_dsn(), nats_url=self.nats_url, crash_points="")
        app = _App(config)
        self.apps.append(app)
        setup = importlib.import_module(f"{service.module}.server").setup
        for binding in await setup(app):
            self.handlers.update(await handlers(binding, name))

    def call(self, path: str, request: bytes, metadata: list[tuple[str, str]], timeout_s: float) -> Outcome:
        """One call of `path` with these request bytes; blocks until it ends (at most `timeout_s`,
        which is also the deadline the handler sees: past it, DEADLINE_EXCEEDED)."""
        return self._run(call(self.handlers[path], request, metadata, timeout_s)).result()

    def close(self) -> None:
        async def close_all() -> None:
            for app in reversed(self.apps):
                await app.close()
        if self.thread.is_alive():
            self._run(close_all()).result(timeout=60)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=10)
        self.supervisor.stop("nats")
        logging.getLogger("aimesh").removeHandler(self.errors)
        self.access_log.setLevel(self.access_level)


class _Errors(logging.Handler):
    """Every ERROR record, formatted with its traceback."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.setFormatter(logging.Formatter("%(name)s: %(message)s"))
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(self.format(record))


async def handlers(binding: kit.Binding, service: str) -> dict[str, grpc.RpcMethodHandler]:
    """The binding's methods by path, each wrapped by the kit's interceptor as the service's
    server wraps it."""
    recorder, interceptor = _Handlers(), Observe(service, admit)
    binding.add(binding.servicer, recorder)
    return {path: await interceptor.intercept_service(recorder.find, _CallDetails(path))
            for path in recorder.paths}


async def call(handler: grpc.RpcMethodHandler, request: bytes, metadata: list[tuple[str, str]],
               timeout_s: float) -> Outcome:
    """Run one call of a handler from `handlers` to its end, as the gateway's."""
    context = _Context(metadata, timeout_s)
    parsed = handler.request_deserializer(request)
    if handler.request_streaming:
        parsed = _one(parsed)
    behaviour = (handler.stream_stream or handler.unary_stream if handler.response_streaming
                 else handler.stream_unary or handler.unary_unary)
    answers: list = []

    async def run() -> None:
        if handler.response_streaming:
            async for answer in behaviour(parsed, context):
                answers.append(answer)
        else:
            answers.append(await behaviour(parsed, context))
    try:
        await asyncio.wait_for(run(), timeout_s)
    except TimeoutError:
        return Outcome(grpc.StatusCode.DEADLINE_EXCEEDED, "the call's deadline passed")
    except grpc.aio.AbortError:
        return context.outcome()
    return Outcome(grpc.StatusCode.OK, answers=answers)


class _App(kit.App):
    """A service's app whose database is a test schema of its own (made here: the operator's
    connection may make schemas)."""

    async def database(self, migrations: list[str], schema: str | None = None, *, init=None):
        return await super().database(migrations, SCHEMA_PREFIX + (schema or self.config.service), init=init)


class _Handlers:
    """Stands in for a grpc.aio server while a generated adder registers a servicer's methods."""

    def __init__(self) -> None:
        self.generic: list = []
        self.paths: list[str] = []

    def add_generic_rpc_handlers(self, handlers) -> None:
        self.generic += handlers

    def add_registered_method_handlers(self, name: str, handlers: dict) -> None:
        self.paths += [f"/{name}/{method}" for method in handlers]

    async def find(self, details):
        for generic in self.generic:
            if (handler := generic.service(details)) is not None:
                return handler
        return None


@dataclasses.dataclass(frozen=True)
class _CallDetails:
    method: str
    invocation_metadata: tuple = ()


class _Context:
    """The parts of grpc.aio.ServicerContext that handlers and the kit's interceptor use: the
    gateway's certificate, the caller's headers, a deadline, and how the call ended."""

    def __init__(self, metadata: list[tuple[str, str]], timeout_s: float):
        self.metadata = tuple(metadata)
        self.deadline = time.monotonic() + timeout_s
        self._code: grpc.StatusCode | None = None
        self._details = ""
        self.trailing: tuple = ()
        self.crash = ""

    def invocation_metadata(self):
        return self.metadata

    def time_remaining(self) -> float:
        return max(0.0, self.deadline - time.monotonic())

    def auth_context(self) -> dict:
        return {SPIFFE_PROPERTY: [spiffe_id(GATEWAY).encode()]}

    def peer(self) -> str:
        return "in-process"

    def set_code(self, code: grpc.StatusCode) -> None:
        self._code = code

    def set_details(self, details: str) -> None:
        self._details = details

    def code(self) -> grpc.StatusCode | None:
        return self._code

    def details(self) -> str:
        return self._details

    def cancelled(self) -> bool:
        return False

    def done(self) -> bool:
        return False

    async def send_initial_metadata(self, metadata) -> None:
        pass

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata=()) -> None:
        if code in CRASHES:   # the interceptor aborts from inside its `except`: the error is current
            self.crash = traceback.format_exc()
        self._code, self._details, self.trailing = code, details, tuple(trailing_metadata or ())
        raise grpc.aio.AbortError()

    async def abort_with_status(self, status: grpc.Status) -> None:
        await self.abort(status.code, status.details, status.trailing_metadata)

    def outcome(self) -> Outcome:
        return Outcome(self._code or grpc.StatusCode.UNKNOWN, self._details,
                       _violations(self.trailing), self.crash)


def _violations(trailing: tuple) -> dict[str, str]:
    found: dict[str, str] = {}
    for key, value in trailing:
        if key == "grpc-status-details-bin":
            for detail in status_pb2.Status.FromString(value).details:
                if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                    bad = error_details_pb2.BadRequest()
                    detail.Unpack(bad)
                    found.update({v.field: v.description for v in bad.field_violations})
    return found


async def _one(request) -> AsyncIterator:
    yield request


def _free_port() -> int:
    with contextlib.closing(socket.socket()) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]

