"""Run last: only the chat model goes away (unloaded from Triton; search still works). A chat
turn is then a retrieval-only answer with its citations, marked FALLBACK; once the model is
loaded again, turns come from it."""
import urllib.error
import urllib.request

import pytest

from aimesh import triton
from aimesh.chat.v1 import chat_pb2, chat_pb2_grpc
from aimesh.common.v1 import common_pb2
from tests.integration.client import bearer, wait_for


def model_control(mesh, action: str, *, as_operator: bool = True) -> None:
    url = f"http://127.0.0.1:{mesh.topo.infra.triton_http_port}/v2/repository/models/chat_lm/{action}"
    headers = triton.admin_headers(mesh.state_dir) if as_operator else {}
    request = urllib.request.Request(url, data=b"", method="POST", headers=headers)
    with urllib.request.urlopen(request, timeout=120) as reply:
        assert reply.status == 200


def test_only_the_operator_may_unload_a_model(mesh):
    with pytest.raises(urllib.error.HTTPError) as refused:
        model_control(mesh, "unload", as_operator=False)
    assert refused.value.code == 403


def test_chat_model_gone_gives_a_retrieval_only_answer_then_the_model_again(mesh, bob):
    def ask():
        with mesh.channel() as channel:
            return list(chat_pb2_grpc.ChatServiceStub(channel).Ask(
                chat_pb2.AskRequest(message=chat_pb2.UserMessage(text="Star Wars", max_tokens=8)),
                metadata=bearer(bob), timeout=120))

    model_control(mesh, "unload")
    try:
        pieces = ask()
        end = pieces[-1].end
        assert end.source == common_pb2.SOURCE_FALLBACK and "chat model unavailable" in end.fallback_reason
        assert "search unavailable" not in end.fallback_reason
        text = "".join(p.delta.text for p in pieces if p.WhichOneof("kind") == "delta")
        assert "Star Wars" in text and any(c.title == "Star Wars" for c in pieces[-2].citations.citations)
    finally:
        model_control(mesh, "load")
    wait_for(lambda: ask()[-1].end.source == common_pb2.SOURCE_MODEL, timeout_s=120, interval_s=1,
             what="the chat model answering again")
