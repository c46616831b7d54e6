"""The audit trail of AI decisions: every answer a model (or its fallback) gave a user, appended
to the AI_DECISIONS stream with the model, its version, a digest of the input, the output ids,
the latency and the trace id. Reading it back is `aimesh audit USER_ID`.

Decisions go through the service's outbox: a decision is stored with the answer (in the same
transaction when the service writes one) and relayed once NATS has it, so an answer never fails
or waits because NATS is down."""
from __future__ import annotations

import hashlib
from collections.abc import Iterable

import asyncpg
import opentelemetry.trace as trace

from aimesh.events.v1 import events_pb2

from .outbox import Outbox


def digest(model_input: bytes | str) -> str:
    """sha256 of the input: decisions can be matched to an input without storing it."""
    return hashlib.sha256(model_input.encode() if isinstance(model_input, str) else model_input).hexdigest()


class Audit:
    def __init__(self, outbox: Outbox, kind: str):
        self.outbox = outbox
        self.subject = f"ai.decisions.{kind}"   # recommend | chat

    async def record(self, *, user_id: str, model: str, version: str, model_input: bytes | str,
                     output_ids: Iterable, latency_s: float, source: str,
                     connection: asyncpg.Connection | None = None) -> None:
        """In the caller's transaction when `connection` is given (the answer it audits), else alone."""
        span = trace.get_current_span().get_span_context()
        decision = events_pb2.AiDecision(
            user_id=user_id, model=model, model_version=version, input_digest=digest(model_input),
            output_ids=[str(i) for i in output_ids], latency_ms=round(latency_s * 1000, 3),
            trace_id=format(span.trace_id, "032x") if span.is_valid else "", source=source)
        if connection is None:
            await self.outbox.append(self.subject, decision)
        else:
            await self.outbox.add(connection, self.subject, decision)
