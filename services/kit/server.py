"""Bootstrap of a grpc.aio service: health, reflection, interceptors, resources, graceful stop.

A service's main is one call: `kit.serve(setup)`, where `setup(app)` opens what the service
needs through `app` (database, events, channels, background tasks) and returns its bindings."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from . import clients, database, events, logs, outbox, retention, telemetry, tls
from .config import Config
from .events import Events
from .interceptors import Observe

if TYPE_CHECKING:
    from . import inference

log = logging.getLogger("aimesh.server")


@dataclass(frozen=True)
class Binding:
    """One gRPC service a process serves: the generated adder and the servicer. Its full name
    comes from the adder (the contract's), so no service spells it out."""
    add: Callable[[Any, grpc.aio.Server], None]
    servicer: Any

    @property
    def name(self) -> str:
        return _service_name(self.add, self.servicer)


class _NameOnly:
    """Stands in for a server while a generated adder registers its handlers: keeps the name."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def add_generic_rpc_handlers(self, handlers) -> None:
        self.names += [handler.service_name() for handler in handlers]

    def add_registered_method_handlers(self, name: str, handlers) -> None:
        pass


def _service_name(add: Callable[[Any, Any], None], servicer: Any) -> str:
    recorder = _NameOnly()
    add(servicer, recorder)
    [name] = recorder.names
    return name


class App:
    """What a service's setup may open; everything is closed, in reverse, on shutdown."""

    def __init__(self, config: Config):
        self.config = config
        self.stopping = asyncio.Event()
        self._resources = contextlib.AsyncExitStack()
        self._tasks: list[asyncio.Task] = []
        self.identity = tls.Identity.of(config)
        self.reflected: tuple[list[str], Any] | None = None

    def reflect(self, names: list[str], pool) -> None:
        """Reflect these services from this descriptor pool instead of the process's own."""
        self.reflected = (names, pool)

    async def database(self, migrations: list[str], schema: str | None = None, *, init=None):
        pool = await database.connect(self.config.postgres_dsn, schema or self.config.service,
                                      migrations, init=init)
        self._resources.push_async_callback(pool.close)
        return pool

    async def listen(self, channel: str, callback) -> None:
        """Postgres notifications on `channel` (NOTIFY) to `callback(connection, pid, channel,
        payload)`, on a connection of their own. It is not reopened after Postgres restarts: use
        it to hear of changes sooner, never as the only way to see them."""
        connection = await database.listener(self.config.postgres_dsn, channel, callback)
        self._resources.push_async_callback(connection.close)

    @property
    def retention(self) -> retention.Retention:
        return retention.Retention.from_json(self.config.retention)

    def prune(self, pool, table: str, *, delete: str, count: str) -> None:
        """Keep `table` to its retention (the topology's retention.tables) with a periodic,
        batched pruning job; see kit.retention.Pruning for the two statements."""
        limits = self.retention
        if table not in limits.tables:
            raise ValueError(f"the topology gives table {table} no retention")
        job = retention.Pruning(pool, table, limits.tables[table], delete=delete, count=count)
        self.spawn(job.run(limits.prune_every_s, self.stopping), name=f"prune-{table}")

    async def events(self) -> events.Events:
        bus = await events.Events.connect(self.config.nats_url, self.config.name,
                                          self.retention.streams, identity=self.identity)
        # close, not drain: drain waits on the cancelled pull subscriptions
        self._resources.push_async_callback(bus.connection.close)
        if self.identity is not None:
            context = bus.connection.options["tls"]
            self.spawn(self.identity.keep_loaded(context, self.stopping), name="nats-certificate")
        return bus

    def outbox(self, pool, bus: Events) -> outbox.Outbox:
        """Events written in the service's transactions, relayed to NATS after each commit
        (the service's migrations must end with outbox.MIGRATION)."""
        relay = outbox.Outbox(pool, bus)
        self.spawn(relay.run(self.stopping), name="outbox")
        return relay

    def channel(self, target: str, *, timeout_s: float | None = None) -> grpc.aio.Channel:
        chan = clients.channel(target, timeout_s=timeout_s or self.config.call_timeout_s,
                               identity=self.identity)
        self._resources.push_async_callback(chan.close)
        return cast(grpc.aio.Channel, chan)   # a clients.Renewing takes stubs as a channel does

    def triton(self) -> inference.Triton:
        """Triton through the mesh, asking for the versions the operator's swaps name."""
        from .inference import ModelVersions, Triton  # numpy and tritonclient: only where used
        return Triton(self.channel(self.config.triton_address), ModelVersions(self.config.model_versions))

    def server_tls(self):
        """A TLS context for a plain (non-gRPC) endpoint the service serves, requiring a mesh
        certificate and renewed with this workload's; None when the mesh runs without mTLS."""
        if self.identity is None:
            return None
        context = self.identity.server_ssl_context()
        self.spawn(self.identity.keep_loaded(context, self.stopping), name="endpoint-certificate")
        return context

    def spawn(self, work: Awaitable[None], name: str) -> None:
        """Run background work (a consumer loop) until shutdown; a crash is logged loudly."""
        task = asyncio.ensure_future(work)
        task.set_name(name)
        task.add_done_callback(self._report)
        self._tasks.append(task)

    def on_close(self, callback: Callable[[], Awaitable[None]]) -> None:
        self._resources.push_async_callback(callback)

    @staticmethod
    def _report(task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception():
            log.error("background task %s died", task.get_name(), exc_info=task.exception())

    async def close(self) -> None:
        self.stopping.set()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._resources.aclose()


class Server:
    """A started grpc.aio server with health and reflection for its bindings."""

    def __init__(self, config: Config, bindings: list[Binding], *, reflected=None):
        self.config = config
        self.names = [b.name for b in bindings]
        identity = tls.Identity.of(config)
        admit = tls.admit if identity else None
        limit = config.max_message_bytes    # said here, not left to gRPC's default
        self.grpc = grpc.aio.server(
            interceptors=[*telemetry.server_interceptors(), Observe(config.service, admit)],
            options=[("grpc.max_receive_message_length", limit),
                     ("grpc.max_send_message_length", limit)])
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc)
        for binding in bindings:
            binding.add(binding.servicer, self.grpc)
        names, pool = reflected or (self.names, None)
        reflection.enable_server_reflection(
            [*names, health.SERVICE_NAME, reflection.SERVICE_NAME], self.grpc, pool=pool)
        address = f"{config.host}:{config.port}"
        if identity is None:
            self.port = self.grpc.add_insecure_port(address)
        else:
            self.port = self.grpc.add_secure_port(address, identity.server_credentials())
        if config.probe_port:
            self.grpc.add_insecure_port(f"{config.host}:{config.probe_port}")

    async def start(self) -> None:
        await self.grpc.start()
        for name in ("", *self.names):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    async def stop(self, grace_s: float | None = None) -> None:
        """NOT_SERVING first (so the gateway stops sending), then drain in-flight calls."""
        await self.health.enter_graceful_shutdown()
        await self.grpc.stop(self.config.grace_s if grace_s is None else grace_s)


Setup = Callable[[App], Awaitable[list[Binding]]]


async def run(setup: Setup, config: Config) -> None:
    """Serve until SIGTERM or SIGINT, then stop gracefully."""
    app = App(config)
    try:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):   # before SERVING: no window for a hard kill
            loop.add_signal_handler(sig, stop.set)
        bindings = await setup(app)
        server = Server(config, bindings, reflected=app.reflected)
        await server.start()
        log.info("serving", extra={"fields": {"port": server.port, "services": server.names}})
        await stop.wait()
        log.info("stopping: draining in-flight calls",
                 extra={"fields": {"grace_s": config.grace_s}})
        await server.stop()
    finally:
        await app.close()
    log.info("stopped")


def serve(setup: Setup) -> None:
    """The main of every service: config from the environment, telemetry, then run."""
    config = Config.from_env()
    logs.setup(config.name, config.log_level)
    telemetry.setup_tracing(config.service, config.name, config.trace_sampling)
    telemetry.serve_metrics(config.metrics_port, config.host)   # beside the gRPC port
    asyncio.run(run(setup, config))
