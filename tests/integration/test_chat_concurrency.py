"""Many chats at once through the gateway: they stream together, a cancel stops only its own, one
user may hold only a few answers at once, and a full model answers from retrieval at once."""
from __future__ import annotations

import threading
import time

import grpc

from aimesh.chat.v1 import chat_pb2, chat_pb2_grpc
from aimesh.common.v1 import common_pb2
from tests.integration.client import bearer, new_user, wait_for
from tests.integration.test_chat_lm import fill, generations, streams  # noqa: F401 (a fixture)

LONG = "Write a very long story about every film in the catalog."


def ask(channel, token: str, text: str = LONG, max_tokens: int = 48):
    return chat_pb2_grpc.ChatServiceStub(channel).Ask(
        chat_pb2.AskRequest(message=chat_pb2.UserMessage(text=text, max_tokens=max_tokens)),
        metadata=bearer(token), timeout=120)


class Listener(threading.Thread):
    """Reads one Ask stream, noting when each delta and the end arrived."""

    def __init__(self, call):
        super().__init__(daemon=True)
        self.call, self.deltas, self.end, self.error = call, [], None, None
        self.first = threading.Event()

    def run(self):
        try:
            for reply in self.call:
                if reply.WhichOneof("kind") == "delta":
                    self.deltas.append(time.monotonic())
                    self.first.set()
                elif reply.WhichOneof("kind") == "end":
                    self.end = (time.monotonic(), reply.end)
        except grpc.RpcError as error:
            self.error = error.code()


def four_chats_one_cancelled(mesh, tokens):
    """Starts four chats, cancels the first after three pieces; returns the listeners and which of
    the other three were still answering at the cancel."""
    with mesh.channel() as channel:
        listeners = [Listener(ask(channel, token)) for token in tokens]
        for listener in listeners:
            listener.start()
        for listener in listeners:
            assert listener.first.wait(120), "a chat got no first token"
        wait_for(lambda: len(listeners[0].deltas) >= 3, timeout_s=60, what="three pieces")
        listeners[0].call.cancel()
        answering = [listener for listener in listeners[1:] if listener.end is None]
        for listener in listeners:
            listener.join(120)
    return listeners, answering


def test_chats_at_once_stream_together_and_a_cancel_stops_only_its_own(mesh, users):
    tokens = [new_user(users, f"together{i}")[1] for i in range(4)]
    cancelled_before = generations(mesh, "cancelled")
    # An answer may be short enough to end on its own before the cancel; the cancel must then meet
    # at least one other answer still streaming, so try again (at most 3 times) until it does.
    for _ in range(3):
        listeners, answering = four_chats_one_cancelled(mesh, tokens)
        if answering:
            break
    assert answering, "every other answer had ended before the cancel, three times"
    assert listeners[0].error == grpc.StatusCode.CANCELLED
    finished = listeners[1:]
    assert all(listener.end and listener.end[1].source == common_pb2.SOURCE_MODEL for listener in finished)
    first_end = min(listener.end[0] for listener in finished)
    assert all(listener.deltas[0] < first_end for listener in listeners)     # all started together
    assert all(listener.end[1].finish_reason != chat_pb2.FINISH_REASON_CANCELLED   # and ran on
               for listener in answering)
    wait_for(lambda: generations(mesh, "cancelled") > cancelled_before, timeout_s=10,
             what="Triton to count the cancelled generation")


def test_a_user_may_have_only_a_few_answers_at_once(mesh, users):
    _, token = new_user(users, "cap")
    per_user = mesh.topo.services["chat"].generations_per_user
    with mesh.channel() as channel:

        def answered():
            try:
                return list(ask(channel, token, text="Star Wars", max_tokens=4))[-1].end
            except grpc.RpcError as error:
                assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                return None

        # An answer is one paragraph and may end on its own before the next question is sent,
        # which then rightly goes through: try again (at most 3 times) until it meets the cap.
        for _ in range(3):
            running = [Listener(ask(channel, token, max_tokens=400)) for _ in range(per_user)]
            for listener in running:
                listener.start()
                assert listener.first.wait(120)
            try:
                list(ask(channel, token, max_tokens=8))
                refused = None
            except grpc.RpcError as error:
                refused = error
            for listener in running:
                listener.call.cancel()
                listener.join(60)
            if refused is not None:
                break
            assert any(listener.end for listener in running), "a question past the cap went through"
            assert wait_for(answered, timeout_s=30, interval_s=0.2, what="the cap to free").turn_id
        assert refused is not None, "every try had an answer end on its own before the question past the cap"
        assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert f"you already have {per_user} answers in progress" in refused.details()
        assert wait_for(answered, timeout_s=30, interval_s=0.2, what="the cap to free").turn_id


def test_a_full_chat_model_answers_from_retrieval_marked_busy(mesh, users, streams):  # noqa: F811
    _, token = new_user(users, "busy")
    holding, _ = fill(mesh, streams)
    try:
        with mesh.channel() as channel:
            pieces = list(ask(channel, token, text="Star Wars", max_tokens=16))
    finally:
        for client, _ in holding:
            client.stop_stream(cancel_requests=True)
    end = pieces[-1].end
    assert end.source == common_pb2.SOURCE_FALLBACK and end.fallback_reason == "chat model busy"
    assert any(c.title == "Star Wars" for c in pieces[-2].citations.citations)
    assert end.usage.completion_tokens == 0    # no model ran
