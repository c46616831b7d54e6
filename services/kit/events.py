"""Events on NATS JetStream: the streams of ARCHITECTURE.md, one envelope, durable consumers."""
from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import nats
from google.protobuf import any_pb2, timestamp_pb2
from google.protobuf.message import DecodeError, Message
from nats.js.api import ConsumerConfig, DiscardPolicy, RetentionPolicy, StreamConfig
from nats.js.errors import NotFoundError
from opentelemetry import propagate, trace
from prometheus_client import Counter, Gauge

from aimesh.events.v1 import events_pb2

from .retention import StreamLimits
from .tls import Identity, dns_name

log = logging.getLogger("aimesh.events")


class _TlsEofNotice(logging.Filter):
    """nats-py upgrades its connection to TLS with a stream protocol of its own that asks to keep
    a connection the server has closed half open, which TLS cannot do; asyncio warns and closes it
    as it would anyway. A WARNING on every closed NATS connection, in each service's log and
    `aimesh audit`'s output, that says nothing to act on."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("returning true from eof_received()")


logging.getLogger("asyncio").addFilter(_TlsEofNotice())

# JetStream's own count of what a consumer has not yet been delivered, as the client sees it on
# every fetch (NATS's monitoring speaks JSON, not Prometheus): the consumer's lag.
PENDING = Gauge("aimesh_events_pending", "Messages a durable consumer has not yet been delivered "
                "(JetStream's count at its last fetch).", ["stream", "consumer"])
TRACER = trace.get_tracer("aimesh.events")
EXPIRED = Counter("aimesh_events_expired_total", "Events delivered after the consumer's dedupe "
                  "window, acknowledged without being applied", ["durable"])

# stream -> (subjects, retention). Each subject has exactly one publishing service.
STREAMS = {
    "USERS": (["user.registered", "user.purchased"], RetentionPolicy.LIMITS),
    "JOBS": (["jobs.index"], RetentionPolicy.WORK_QUEUE),
    "JOB_EVENTS": (["job.completed"], RetentionPolicy.LIMITS),
    "CONTENT_EVENTS": (["content.published", "content.rejected", "content.failed"], RetentionPolicy.LIMITS),
    "AI_DECISIONS": (["ai.decisions.recommend", "ai.decisions.chat"], RetentionPolicy.LIMITS),
    # Events a consumer gave up on, kept for a person to look at (and replay).
    "DEAD_LETTERS": (["deadletter.>"], RetentionPolicy.LIMITS),
}
DEAD_LETTER_PREFIX = "deadletter."
NATS_SERVER = "nats"         # the workload name in the NATS server's certificate
REDELIVERY_DELAY_S = 1.0

RETRY_FETCH_S = 1.0
FETCH_WAIT_S = 1.0           # a fetch that finds nothing new returns after this
Handler = Callable[[events_pb2.Envelope], Awaitable[None]]
GiveUp = Callable[[events_pb2.Envelope, Exception], Awaitable[None]]


def envelope(subject: str, payload: Message) -> events_pb2.Envelope:
    carrier: dict[str, str] = {}
    propagate.inject(carrier)   # the trace of the request that caused the event
    packed = any_pb2.Any()
    packed.Pack(payload)
    time = timestamp_pb2.Timestamp()
    time.GetCurrentTime()
    return events_pb2.Envelope(
        event_id=uuid.uuid4().hex, type=subject, time=time, payload=packed,
        traceparent=carrier.get("traceparent", ""), tracestate=carrier.get("tracestate", ""))


class Progress:
    """How current a consumer is: it was caught up with its stream when a fetch found nothing
    new, or when the message it last handled was the last one pending. A reader of what the
    consumer keeps asks `current(within_s)` before trusting it."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.caught_up_at: float | None = None

    def caught_up(self) -> None:
        self.caught_up_at = self.clock()

    def current(self, within_s: float) -> bool:
        return self.caught_up_at is not None and self.clock() - self.caught_up_at <= within_s


def _age_s(event: events_pb2.Envelope) -> float:
    now = timestamp_pb2.Timestamp()
    now.GetCurrentTime()
    return (now.ToNanoseconds() - event.time.ToNanoseconds()) / 1e9


M = TypeVar("M", bound=Message)


def unpack(event: events_pb2.Envelope, message_type: type[M]) -> M:
    message = message_type()
    if not event.payload.Unpack(message):
        raise ValueError(f"event {event.event_id} ({event.type}) does not carry {message_type.__name__}")
    return message


DUPLICATE_WINDOW_S = 120.0   # JetStream's default: a Nats-Msg-Id seen this recently is dropped


def stream_config(name: str, limits: StreamLimits | None) -> StreamConfig:
    subjects, retention = STREAMS[name]
    config = StreamConfig(name=name, subjects=subjects, retention=retention)
    if limits:
        config.max_age = limits.max_age_s          # seconds; the client sends nanoseconds
        config.max_bytes = limits.max_bytes
        config.discard = DiscardPolicy.NEW if limits.discard == "new" else DiscardPolicy.OLD
        # JetStream refuses a duplicate window longer than the messages live
        config.duplicate_window = min(DUPLICATE_WINDOW_S, limits.max_age_s)
    return config


@dataclass
class Events:
    connection: nats.NATS

    @classmethod
    async def connect(cls, url: str, name: str, limits: dict[str, StreamLimits] | None = None,
                      *, identity: Identity | None = None) -> Events:
        """With an identity: TLS, and NATS knows the caller by its certificate (the subjects it
        may use are in the topology's `events`)."""
        secure = {}
        if identity is not None:
            secure = {"tls": identity.ssl_context(), "tls_hostname": dns_name(NATS_SERVER)}
        connection = await nats.connect(url, name=name, connect_timeout=5, max_reconnect_attempts=-1,
                                        **secure)
        events = cls(connection)
        await events.ensure_streams(limits or {})
        return events

    @property
    def jetstream(self):
        return self.connection.jetstream(timeout=5)

    async def ensure_streams(self, limits: dict[str, StreamLimits]) -> list[str]:
        """Create the streams, and bring the limits of those named in `limits` in line in place
        (messages stay; JetStream applies a smaller limit by discarding the oldest). A client given
        no limits (a test's publisher) changes none. Returns the streams changed."""
        changed = []
        for name in STREAMS:
            wanted = stream_config(name, limits.get(name))
            try:
                current = (await self.jetstream.stream_info(name)).config
            except NotFoundError:
                await self.jetstream.add_stream(wanted)
                continue
            limited = ("max_age", "max_bytes", "discard", "duplicate_window")
            if name in limits and any(getattr(current, k) != getattr(wanted, k) for k in limited):
                for key in limited:
                    setattr(current, key, getattr(wanted, key))
                await self.jetstream.update_stream(current)
                changed.append(name)
        return changed

    async def publish(self, subject: str, payload: Message) -> events_pb2.Envelope:
        """Publish and wait for JetStream's ack: once this returns, the event is stored."""
        event = envelope(subject, payload)
        await self.jetstream.publish(subject, event.SerializeToString(),
                                     headers={"Nats-Msg-Id": event.event_id})
        return event

    async def consume(self, stream: str, durable: str, handle: Handler, *,
                      subjects: list[str] | None = None, max_deliver: int = 5,
                      give_up: GiveUp | None = None, dedupe_window_s: float | None = None,
                      inactive_s: float | None = None, progress: Progress | None = None,
                      stop: asyncio.Event) -> None:
        """Run a durable pull consumer until `stop` is set. `handle` must be idempotent by
        event_id; a message is acked only after it returns, so a crash means redelivery.
        A message that fails `max_deliver` times (or cannot be parsed) is dead-lettered:
        republished on deadletter.<subject> with the error, and `give_up` is told.
        `dedupe_window_s`: how long the handler remembers event ids (its table's retention); an
        event older than that is acknowledged unapplied, as it may have been applied and forgotten.
        `inactive_s`: JetStream removes the consumer after this long without a fetch (one per
        instance, whose instance may never come back). `progress` is told when it is caught up."""
        config = ConsumerConfig(durable_name=durable, max_deliver=max_deliver, ack_wait=30,
                                filter_subjects=subjects or [], inactive_threshold=inactive_s)
        subscription = await self.jetstream.pull_subscribe(
            "", durable=durable, stream=stream, config=config)
        while not stop.is_set():
            try:
                messages = await subscription.fetch(batch=32, timeout=FETCH_WAIT_S)
            except (TimeoutError, nats.errors.TimeoutError):   # nothing new: poll again
                PENDING.labels(stream, durable).set(0)
                if progress:
                    progress.caught_up()
                continue
            except nats.errors.Error as failure:   # server restarting: the client reconnects
                log.warning("fetch failed, retrying: %s", failure,
                            extra={"fields": {"durable": durable}})
                await asyncio.sleep(RETRY_FETCH_S)
                continue
            for message in messages:
                await self._deliver(message, durable, handle, max_deliver, give_up, dedupe_window_s)
            if messages:
                PENDING.labels(stream, durable).set(messages[-1].metadata.num_pending)
            if progress and messages and messages[-1].metadata.num_pending == 0:
                progress.caught_up()

    async def _deliver(self, message, durable: str, handle: Handler, max_deliver: int,
                       give_up: GiveUp | None, dedupe_window_s: float | None) -> None:
        try:
            event = events_pb2.Envelope.FromString(message.data)
        except DecodeError as malformed:
            await self._dead_letter(message, durable, malformed)
            return
        if dedupe_window_s is not None and _age_s(event) > dedupe_window_s:
            log.warning("event older than the dedupe window; acknowledged, not applied",
                        extra={"fields": {"durable": durable, "event_id": event.event_id}})
            EXPIRED.labels(durable).inc()
            await message.ack()
            return
        try:
            # The handling joins the trace of the request that caused the event (its envelope
            # carries the trace context), so a purchase's notification is in the purchase's trace.
            caused_by = propagate.extract({"traceparent": event.traceparent, "tracestate": event.tracestate})
            with TRACER.start_as_current_span(
                    f"process {event.type}", context=caused_by, kind=trace.SpanKind.CONSUMER,
                    attributes={"messaging.system": "nats", "messaging.destination.name": message.subject,
                                "messaging.consumer.group.name": durable,
                                "messaging.message.id": event.event_id}):
                await handle(event)
        except Exception as failure:
            if message.metadata.num_delivered < max_deliver:
                log.warning("event handling failed; it will be redelivered", exc_info=failure,
                            extra={"fields": {"subject": message.subject, "event_id": event.event_id}})
                await message.nak(delay=REDELIVERY_DELAY_S)
                return
            await self._dead_letter(message, durable, failure)
            if give_up:
                await give_up(event, failure)
        else:
            await message.ack()

    async def _dead_letter(self, message, durable: str, failure: Exception) -> None:
        log.error("event dead-lettered after failed deliveries", exc_info=failure,
                  extra={"fields": {"subject": message.subject, "durable": durable}})
        await self.jetstream.publish(f"{DEAD_LETTER_PREFIX}{message.subject}", message.data,
                                     headers={"Aimesh-Consumer": durable,
                                              "Aimesh-Error": str(failure)[:500]})
        await message.term()
