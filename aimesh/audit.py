"""`aimesh audit USER_ID`: the AI decisions made for a user, read back from AI_DECISIONS."""
from __future__ import annotations

import json

import nats
from google.protobuf import json_format

from aimesh.events.v1 import events_pb2

READ_TIMEOUT_S = 5.0


async def decisions(connection: nats.NATS, user_id: str) -> tuple[list[dict], str]:
    """Every decision for the user still kept, oldest first, as JSON-ready dicts (with subject and
    time), and how far back the trail reaches (the stream's oldest message; "" when empty).
    Closes the connection."""
    try:
        jetstream = connection.jetstream(timeout=5)
        total = (await jetstream.stream_info("AI_DECISIONS")).state.messages
        found, first = [], ""
        if total:
            reader = await jetstream.subscribe("ai.decisions.>", ordered_consumer=True)
            for _ in range(total):
                message = await reader.next_msg(timeout=READ_TIMEOUT_S)
                event = events_pb2.Envelope.FromString(message.data)
                first = first or event.time.ToJsonString()
                decision = events_pb2.AiDecision()
                if event.payload.Unpack(decision) and decision.user_id == user_id:
                    found.append({"subject": event.type, "time": event.time.ToJsonString(),
                                  **json_format.MessageToDict(decision)})
        return found, first
    finally:
        await connection.close()


def horizon(first: str, max_age_s: float | None) -> str:
    """What the trail can show: from its oldest kept decision, under the stream's retention."""
    kept = f"kept {max_age_s / 86400:g} days" if max_age_s else "kept without an age limit"
    return (f"audit trail from {first} ({kept}; older decisions have expired)" if first
            else f"audit trail empty ({kept})")


def lines(found: list[dict]) -> str:
    return "\n".join(json.dumps(d) for d in found)
