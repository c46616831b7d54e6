"""The content saga: reserve → check the prompt → generate → check the text → index → publish.
A failure undoes what was done, in reverse (remove the index entry, discard the generated text),
then marks the content REJECTED, FAILED or CANCELLED and announces it. Progress lives in Postgres,
so a saga whose instance died is taken over, from its last recorded step, by whichever instance
claims it once the lease runs out (kit events and the outbox carry the announcements)."""
from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import grpc
from opentelemetry import propagate, trace

from aimesh.events.v1 import events_pb2
from services import kit
from services.kit.crash import CrashPoints
from services.kit.outbox import Outbox
from services.kit.retention import seconds

from .store import Content, ContentStore, LeaseLost
from .writing import Rejected, Writer

log = logging.getLogger("aimesh.content.saga")
TRACER = trace.get_tracer("aimesh.content")

POLL_S = 1.0          # how often an idle instance looks for sagas nobody holds (a dead instance's)
CONCURRENT = 4        # sagas one instance drives at once
RETRY_BACKOFF_S = 1.0
# A step that fails with these is tried again (the model or search down, slow or busy).
TRANSIENT = (kit.Unavailable, grpc.aio.AioRpcError, TimeoutError, *kit.DATABASE_UNREACHABLE)
ENDED_SUBJECT = {"published": "content.published", "rejected": "content.rejected",
                 "failed": "content.failed"}


@dataclass(frozen=True)
class SagaConfig:
    step_timeout_s: float = 60.0
    retries: int = 2          # tries after the first, per step
    deadline_s: float = 300.0
    lease_s: float = 6.0

    @classmethod
    def parse(cls, raw: dict[str, str]) -> SagaConfig:
        return cls(step_timeout_s=seconds(raw.get("step_timeout", "60s")), retries=int(raw.get("retries", 2)),
                   deadline_s=seconds(raw.get("deadline", "5m")), lease_s=seconds(raw.get("lease", "6s")))


def _now() -> datetime:
    return datetime.now(UTC)


class Saga:
    def __init__(self, store: ContentStore, writer: Writer, outbox: Outbox, config: SagaConfig,
                 holder: str, crash: CrashPoints):
        self.store, self.writer, self.outbox, self.config = store, writer, outbox, config
        self.holder, self.crash = holder, crash
        self.wake = asyncio.Event()    # set when this instance created a saga: claim it now
        self._driving: set[asyncio.Task] = set()
        self.steps: dict[str, Callable[[Content, float], Awaitable[tuple[str, dict]]]] = {
            "check_prompt": self._check_prompt, "generate": self._generate,
            "check_text": self._check_text, "index": self._index}

    async def run(self, stop: asyncio.Event) -> None:
        """Claim and drive sagas until `stop`, up to CONCURRENT at once."""
        slots = asyncio.Semaphore(CONCURRENT)
        while not stop.is_set():
            await slots.acquire()
            try:
                content = await self.store.claim(self.holder, self.config.lease_s)
            except kit.DATABASE_UNREACHABLE as failure:
                log.warning("claiming a saga failed; will retry: %s", failure)
                content = None
            if content is None:
                slots.release()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), POLL_S)
                self.wake.clear()
                continue
            task = asyncio.ensure_future(self._drive(content))
            self._driving.add(task)

            def finished(done: asyncio.Task, slots=slots) -> None:
                self._driving.discard(done)
                slots.release()
            task.add_done_callback(finished)

    async def _drive(self, content: Content) -> None:
        """Advance one saga as far as it goes, renewing the lease meanwhile; a lost lease stops
        the work at once (another instance holds the saga now)."""
        work = asyncio.ensure_future(self._advance(content))
        keeper = asyncio.ensure_future(self._keep_lease(content.id, work))
        try:
            await work
        except (LeaseLost, asyncio.CancelledError):
            log.warning("lost the lease of a saga; another instance has it",
                        extra={"fields": {"content_id": content.id}})
        except Exception:
            log.exception("a saga stopped on an unexpected error; it is retried once its lease runs out",
                          extra={"fields": {"content_id": content.id}})
        finally:
            keeper.cancel()
            with contextlib.suppress(Exception):
                await self.store.release(content.id, self.holder)

    async def _keep_lease(self, content_id: str, work: asyncio.Future) -> None:
        interval = self.config.lease_s / 3
        while not work.done():
            await asyncio.sleep(interval)
            try:
                await self.store.renew(content_id, self.holder, self.config.lease_s)
            except LeaseLost:
                work.cancel()
                return
            except kit.DATABASE_UNREACHABLE:
                continue   # the fenced writes refuse if the lease runs out meanwhile

    async def _advance(self, content: Content) -> None:
        while not content.final:
            if content.state == "compensating":
                content = await self._undo(content)
            elif content.cancel_requested:
                content = await self._begin_undo(content, "cancelled", "cancelled by its owner")
            elif _now() >= content.deadline:
                content = await self._begin_undo(content, "failed", "the saga's deadline passed")
            else:
                step = next(s.name for s in content.steps if s.state != "done")
                content = await (self._publish(content) if step == "publish" else self._do(content, step))

    async def _do(self, content: Content, step: str) -> Content:
        """One step, tried up to 1 + retries times, each within the step's timeout (and the
        saga's deadline); its result recorded with its effect in one transaction."""
        for attempt in range(1, self.config.retries + 2):
            content = await self.store.change(content, self.holder, step=step, step_state="running")
            budget = min(self.config.step_timeout_s, (content.deadline - _now()).total_seconds())
            try:
                with _span(content, step, attempt):
                    async with asyncio.timeout(max(budget, 0.001)):
                        outcome, effect = await self.steps[step](content, budget)
            except Rejected as rejected:
                content = await self.store.change(content, self.holder, step=step, step_state="failed",
                                                  outcome=rejected.reason)
                return await self._begin_undo(content, "rejected", rejected.reason)
            except TRANSIENT as failure:
                why = _describe(failure)
                if attempt > self.config.retries or _now() >= content.deadline:
                    content = await self.store.change(content, self.holder, step=step, step_state="failed",
                                                      outcome=f"attempt {attempt}: {why}")
                    return await self._begin_undo(content, "failed", f"{step} failed: {why}")
                content = await self.store.change(content, self.holder, step=step, step_state="pending",
                                                  outcome=f"attempt {attempt}: {why}; retrying")
                await asyncio.sleep(RETRY_BACKOFF_S * attempt)
                continue
            content = await self.store.change(content, self.holder, step=step, step_state="done",
                                              outcome=outcome, **effect)
            self.crash.reached(f"after:{step}")
            return content
        raise AssertionError("unreachable: the last attempt returns")

    async def _check_prompt(self, content: Content, timeout_s: float) -> tuple[str, dict]:
        return await self.writer.check("prompt", content.prompt, timeout_s), {}

    async def _generate(self, content: Content, timeout_s: float) -> tuple[str, dict]:
        text, outcome = await self.writer.generate(content, timeout_s)
        return outcome, {"draft": text}

    async def _check_text(self, content: Content, timeout_s: float) -> tuple[str, dict]:
        return await self.writer.check("text", content.draft or "", timeout_s), {}

    async def _index(self, content: Content, timeout_s: float) -> tuple[str, dict]:
        return await self.writer.index(content, content.draft or "", timeout_s), {}

    async def _publish(self, content: Content) -> Content:
        """The last step: the text becomes the content's, and content.published goes out with it."""
        content = await self.store.change(content, self.holder, step="publish", step_state="running")
        with _span(content, "publish", content.step("publish").attempts):   # the event carries the trace on
            content = await self.store.change(
                content, self.holder, step="publish", step_state="done", outcome="published and announced",
                announce=self._announcer(content, "published"), state="published", text=content.draft or "",
                draft=None, release=True)
        self.crash.reached("after:publish")
        return content

    async def _begin_undo(self, content: Content, ends_as: str, reason: str) -> Content:
        log.info("saga compensating", extra={"fields": {"content_id": content.id, "ends_as": ends_as,
                                                        "reason": reason}})
        return await self.store.change(content, self.holder, state="compensating", ends_as=ends_as,
                                       reason=reason)

    async def _undo(self, content: Content) -> Content:
        """Compensations in reverse order of the steps, each idempotent; then the final state."""
        with _span(content, "compensate", 1):
            return await self._compensate(content)

    async def _compensate(self, content: Content) -> Content:
        index = content.step("index")
        if index.state in ("running", "done", "failed"):   # running or failed: it may have landed
            outcome = await self._retrying(lambda: self.writer.unindex(content, self.config.step_timeout_s))
            content = await self.store.change(content, self.holder, step="index",
                                              step_state="compensated", outcome=outcome)
            self.crash.reached("after:undo_index")
        if content.draft is not None:
            content = await self.store.change(content, self.holder, step="generate", step_state="compensated",
                                              outcome="the generated text was discarded", draft=None)
        return await self.store.change(content, self.holder, announce=self._announcer(content, content.ends_as),
                                       state=content.ends_as, release=True)

    async def _retrying(self, undo: Callable[[], Awaitable[str]]) -> str:
        """A compensation must happen: tried until it does (or the lease goes to another)."""
        attempt = 0
        while True:
            attempt += 1
            try:
                return await undo()
            except TRANSIENT as failure:
                log.warning("a compensation failed; retrying", extra={"fields": {"error": _describe(failure)}})
                await asyncio.sleep(min(RETRY_BACKOFF_S * attempt, 10.0))

    def _announcer(self, content: Content, state: str):
        subject = ENDED_SUBJECT.get(state)
        if subject is None:   # cancelled: its owner knows
            return None

        async def announce(connection) -> None:
            await self.outbox.add(connection, subject, events_pb2.ContentEnded(
                content_id=content.id, owner_id=content.owner, title=content.prompt[:80],
                reason=content.reason if state != "published" else ""))
        return announce


def _span(content: Content, step: str, attempt: int):
    """A step's span, in the trace of the CreateContent call that started the saga (also when
    another instance resumes it); the step's calls to Triton and search-svc go under it."""
    created_by = propagate.extract({"traceparent": content.traceparent})
    return TRACER.start_as_current_span(f"saga {step}", context=created_by, attributes={
        "aimesh.content.id": content.id, "aimesh.saga.step": step, "aimesh.saga.attempt": attempt})


def _describe(failure: BaseException) -> str:
    if isinstance(failure, grpc.aio.AioRpcError):
        return f"{failure.code().name}: {failure.details()}"
    if isinstance(failure, kit.Error):
        return failure.message
    return str(failure) or type(failure).__name__
