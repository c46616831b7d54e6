"""Run last: NATS stops. Recommend and chat still answer, and the AI decisions they made, kept
in each service's outbox, reach AI_DECISIONS once NATS is back."""
import json

from aimesh.chat.v1 import chat_pb2, chat_pb2_grpc
from aimesh.user.v1 import user_pb2
from tests.integration.client import bearer, new_user, wait_for
from tests.integration.test_services import recommend


def decisions(mesh, user_id: str) -> list[dict]:
    audit = mesh.cli("audit", user_id, timeout=60)
    return [json.loads(line) for line in audit.stdout.splitlines() if line] if audit.returncode == 0 else []


def test_nats_down_recommend_and_chat_answer_and_their_audit_arrives_when_it_is_back(mesh, users):
    _, token = new_user(users, "natsdown")
    user_id = users.GetProfile(user_pb2.GetProfileRequest(), metadata=bearer(token), timeout=5).profile.user_id
    stopped = mesh.cli("stop", "nats")
    assert stopped.returncode == 0, stopped.stderr
    try:
        assert "stopped" in mesh.cli("status").stdout
        with mesh.channel() as channel:
            recommended = recommend(channel, token, limit=3)   # raises if it fails
            turn = list(chat_pb2_grpc.ChatServiceStub(channel).Ask(
                chat_pb2.AskRequest(message=chat_pb2.UserMessage(text="Fargo", max_tokens=8)),
                metadata=bearer(token), timeout=120))
        assert len(recommended.items) == 3 and turn[-1].WhichOneof("kind") == "end"
    finally:
        started = mesh.cli("start", "nats")
    assert started.returncode == 0, started.stderr
    found = wait_for(lambda: len(got := decisions(mesh, user_id)) >= 2 and got, timeout_s=60, interval_s=1,
                     what="the decisions made while NATS was down")
    assert sorted(d["subject"] for d in found) == ["ai.decisions.chat", "ai.decisions.recommend"]
    audited = next(d for d in found if d["subject"] == "ai.decisions.recommend")
    assert audited["outputIds"] == [str(i.item_id) for i in recommended.items]
