"""Run last: Triton stops in the middle of a run of Recommend calls. Every call still answers
(popular items, marked FALLBACK), chat answers a marked fallback too; once Triton is back,
answers come from the model again."""
import threading

from aimesh.chat.v1 import chat_pb2, chat_pb2_grpc
from aimesh.common.v1 import common_pb2
from aimesh.user.v1 import user_pb2
from tests.integration.client import bearer, wait_for
from tests.integration.test_services import model_answer, recommend


def test_triton_down_answers_from_fallback_then_from_the_model_again(mesh, users, bob):
    users.RecordPurchase(user_pb2.RecordPurchaseRequest(item_id=98), metadata=bearer(bob), timeout=5)
    with mesh.channel() as channel:
        model_answer(channel, bob)
        sources, asked = [], iter(range(10**6))

        def answer():   # a new question each time (an unknown id to exclude): never cached
            reply = recommend(channel, bob, exclude=[10**7 + next(asked)])   # raises if it fails
            sources.append((reply.source, reply.fallback_reason))
            return reply

        stopping = threading.Thread(target=mesh.cli, args=("stop", "triton"))
        stopping.start()
        wait_for(lambda: answer().source == common_pb2.SOURCE_FALLBACK, interval_s=0.05,
                 timeout_s=60, what="a fallback answer while Triton is down")
        stopping.join()
        for _ in range(20):   # while it stays down, every call answers
            assert answer().source == common_pb2.SOURCE_FALLBACK
        assert all(reason.startswith("model unavailable") for source, reason in sources
                   if source == common_pb2.SOURCE_FALLBACK)
        chat_reply = list(chat_pb2_grpc.ChatServiceStub(channel).Ask(
            chat_pb2.AskRequest(message=chat_pb2.UserMessage(text="Star Wars", max_tokens=16)),
            metadata=bearer(bob), timeout=30))
        # Search needs Triton's embedding too: the fallback answer says both are unavailable.
        assert chat_reply[-1].end.source == common_pb2.SOURCE_FALLBACK
        assert "chat model unavailable" in chat_reply[-1].end.fallback_reason
        assert "search unavailable" in chat_reply[-1].end.fallback_reason

        started = mesh.cli("start", "triton", timeout=300)
        assert started.returncode == 0, started.stderr
        wait_for(lambda: answer().source == common_pb2.SOURCE_MODEL, interval_s=0.5, timeout_s=90,
                 what="the model answering again after Triton is back")
