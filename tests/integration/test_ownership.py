"""A user never reads or changes another's data: an intruder tries every call that names a
resource of someone else (a conversation, a job, a notification), and every call that acts on
"the caller" with the owner's id slipped into the identity headers. Each attempt gets the
status the service gives, and the owner's data is the same afterwards."""
from dataclasses import dataclass

import grpc
import pytest

from aimesh.chat.v1 import chat_pb2, chat_pb2_grpc
from aimesh.common.v1 import common_pb2
from aimesh.notify.v1 import notify_pb2, notify_pb2_grpc
from aimesh.recommend.v1 import recommend_pb2, recommend_pb2_grpc
from aimesh.search.v1 import search_pb2, search_pb2_grpc
from aimesh.user.v1 import user_pb2, user_pb2_grpc
from tests.integration.client import bearer, new_user, stored, wait_for
from tests.integration.test_demo_data import wait_for_demo_history

OK, NOT_FOUND, DENIED = grpc.StatusCode.OK, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.PERMISSION_DENIED


@dataclass
class Stubs:
    users: user_pb2_grpc.UserServiceStub
    search: search_pb2_grpc.SearchServiceStub
    recommend: recommend_pb2_grpc.RecommendServiceStub
    chat: chat_pb2_grpc.ChatServiceStub
    inbox: notify_pb2_grpc.NotificationServiceStub


@dataclass
class Owned:
    """What the owner (a fresh user) and the admin have that the intruder goes after."""
    token: str
    user_id: str
    conversation_id: str
    notification_id: str
    job_id: str


@pytest.fixture(scope="module")
def stubs(mesh):
    with mesh.channel() as channel:
        yield Stubs(user_pb2_grpc.UserServiceStub(channel), search_pb2_grpc.SearchServiceStub(channel),
                    recommend_pb2_grpc.RecommendServiceStub(channel), chat_pb2_grpc.ChatServiceStub(channel),
                    notify_pb2_grpc.NotificationServiceStub(channel))


@pytest.fixture(scope="module")
def owned(stubs, users, admin) -> Owned:
    _, token = new_user(users, "owner")
    user_id = users.GetProfile(user_pb2.GetProfileRequest(), metadata=bearer(token), timeout=5).profile.user_id
    turn = list(stubs.chat.Ask(chat_pb2.AskRequest(message=chat_pb2.UserMessage(text="Fargo", max_tokens=4)),
                               metadata=bearer(token), timeout=120))[-1].end
    [welcome] = wait_for(lambda: stubs.inbox.ListNotifications(
        notify_pb2.ListNotificationsRequest(), metadata=bearer(token), timeout=5).notifications,
        what="the owner's welcome notification")
    job = stubs.search.SubmitIndexJob(search_pb2.SubmitIndexJobRequest(documents=[search_pb2.Document(
        document_id="owned-doc", title="Owned", text="an admin's document")]), metadata=bearer(admin), timeout=10).job
    wait_for(lambda: stubs.search.GetJob(search_pb2.GetJobRequest(job_id=job.job_id), metadata=bearer(admin),
                                         timeout=5).job.state == search_pb2.JOB_STATE_SUCCEEDED,
             timeout_s=60, what="the admin's job to finish")
    return Owned(token, user_id, turn.conversation_id, welcome.notification_id, job.job_id)


def _turns(mesh, conversation_id: str) -> int:
    """chat-svc keeps turns in its own schema and no call lists them: the test reads the table."""
    return stored(mesh, "SELECT count(*) FROM chat.turns WHERE conversation_id = $1::uuid",
                  conversation_id)[0]


def snapshot(mesh, stubs: Stubs, owned: Owned, admin: str) -> tuple:
    """Everything of the owner's (and the admin's job) an intruder might read or change."""
    profile = stubs.users.GetProfile(user_pb2.GetProfileRequest(), metadata=bearer(owned.token), timeout=5).profile
    inbox = stubs.inbox.ListNotifications(notify_pb2.ListNotificationsRequest(page_size=100),
                                          metadata=bearer(owned.token), timeout=5).notifications
    job = stubs.search.GetJob(search_pb2.GetJobRequest(job_id=owned.job_id), metadata=bearer(admin), timeout=5).job
    return (profile.SerializeToString(), [(n.notification_id, n.kind, n.read) for n in inbox],
            _turns(mesh, owned.conversation_id), job.SerializeToString())


def spoofing(token: str, owned: Owned) -> list[tuple[str, str]]:
    """The intruder's own token with the owner's identity written into the headers."""
    return bearer(token) + [("x-aimesh-user-id", owned.user_id), ("x-aimesh-role", "admin"),
                            ("x-aimesh-tier", "pro")]


def message(owned: Owned) -> chat_pb2.UserMessage:
    return chat_pb2.UserMessage(conversation_id=owned.conversation_id, text="what did I ask?", max_tokens=4)


# name -> (attempt(stubs, intruder token, owned) returning the reply, the status it gets)
ATTEMPTS = {
    "Ask resuming another's conversation": (lambda s, t, o: list(s.chat.Ask(
        chat_pb2.AskRequest(message=message(o)), metadata=bearer(t), timeout=30)), NOT_FOUND),
    "Chat resuming another's conversation": (lambda s, t, o: list(s.chat.Chat(
        iter([chat_pb2.ChatRequest(message=message(o))]), metadata=bearer(t), timeout=30)), NOT_FOUND),
    "GetJob of another's job": (lambda s, t, o: s.search.GetJob(
        search_pb2.GetJobRequest(job_id=o.job_id), metadata=bearer(t), timeout=5), NOT_FOUND),
    "GetJob of another's job, claiming admin": (lambda s, t, o: s.search.GetJob(
        search_pb2.GetJobRequest(job_id=o.job_id), metadata=spoofing(t, o), timeout=5), NOT_FOUND),
    "DeleteDocument of the admin's document": (lambda s, t, o: s.search.DeleteDocument(
        search_pb2.DeleteDocumentRequest(document_id="owned-doc"), metadata=spoofing(t, o), timeout=5), DENIED),
    "MarkRead of another's notification": (lambda s, t, o: s.inbox.MarkRead(
        notify_pb2.MarkReadRequest(notification_ids=[o.notification_id]), metadata=bearer(t), timeout=5), OK),
    "ListNotifications as another": (lambda s, t, o: s.inbox.ListNotifications(
        notify_pb2.ListNotificationsRequest(), metadata=spoofing(t, o), timeout=5), OK),
    "GetProfile as another": (lambda s, t, o: s.users.GetProfile(
        user_pb2.GetProfileRequest(), metadata=spoofing(t, o), timeout=5), OK),
    "UpdateProfile as another": (lambda s, t, o: s.users.UpdateProfile(
        user_pb2.UpdateProfileRequest(display_name="Intruder was here"), metadata=spoofing(t, o), timeout=5), OK),
    "RecordPurchase as another": (lambda s, t, o: s.users.RecordPurchase(
        user_pb2.RecordPurchaseRequest(item_id=181), metadata=spoofing(t, o), timeout=5), OK),
    "SetAccess on another": (lambda s, t, o: s.users.SetAccess(
        user_pb2.SetAccessRequest(email="bob@demo.aimesh", tier=user_pb2.TIER_FREE), metadata=spoofing(t, o),
        timeout=5), DENIED),
}


@pytest.mark.parametrize("attempt", ATTEMPTS)
def test_a_user_never_reads_or_changes_anothers_data(mesh, stubs, users, owned, admin, attempt):
    call, expected = ATTEMPTS[attempt]
    _, intruder = new_user(users, "intruder")
    intruder_id = users.GetProfile(user_pb2.GetProfileRequest(), metadata=bearer(intruder),
                                   timeout=5).profile.user_id
    before = snapshot(mesh, stubs, owned, admin)
    try:
        reply, code = call(stubs, intruder, owned), OK
    except grpc.RpcError as refused:
        reply, code = None, refused.code()
    assert code == expected
    if isinstance(reply, notify_pb2.MarkReadResponse):
        assert reply.updated_count == 0
    if isinstance(reply, notify_pb2.ListNotificationsResponse):
        assert owned.notification_id not in [n.notification_id for n in reply.notifications]
    if isinstance(reply, (user_pb2.GetProfileResponse, user_pb2.UpdateProfileResponse)):
        assert reply.profile.user_id == intruder_id   # the token's user, whatever the headers say
    if isinstance(reply, user_pb2.RecordPurchaseResponse):
        # The purchase is the intruder's: it is announced to the intruder, never to the owner.
        wait_for(lambda: [n for n in stubs.inbox.ListNotifications(
            notify_pb2.ListNotificationsRequest(), metadata=bearer(intruder), timeout=5).notifications
            if n.kind == "user.purchased"], what="the intruder's own purchase notification")
    assert snapshot(mesh, stubs, owned, admin) == before
    if attempt == "SetAccess on another":
        bob = users.Login(user_pb2.LoginRequest(email="bob@demo.aimesh", password="aimesh-demo"), timeout=5)
        assert bob.profile.tier == user_pb2.TIER_PRO
    if attempt == "DeleteDocument of the admin's document":
        found = stubs.search.Search(search_pb2.SearchRequest(query="an admin's document", page_size=3),
                                    metadata=bearer(admin), timeout=5)
        assert "owned-doc" in [r.document.document_id for r in found.results]


def test_recommendations_are_only_ever_the_callers(mesh, users, bob):
    """The intruder, claiming bob's id in the headers, gets their own cold-start answer, not bob's
    (bob has a history, so his come from the model)."""
    bob_id = users.GetProfile(user_pb2.GetProfileRequest(), metadata=bearer(bob), timeout=5).profile.user_id
    _, intruder = new_user(users, "intruder")
    wait_for_demo_history(mesh, "bob@demo.aimesh")
    with mesh.channel() as channel:
        stub = recommend_pb2_grpc.RecommendServiceStub(channel)
        theirs = stub.Recommend(recommend_pb2.RecommendRequest(limit=5), metadata=bearer(intruder) + [
            ("x-aimesh-user-id", bob_id)], timeout=5)
        bobs = stub.Recommend(recommend_pb2.RecommendRequest(limit=5), metadata=bearer(bob), timeout=5)
    assert theirs.source == common_pb2.SOURCE_FALLBACK and "cold start" in theirs.fallback_reason
    assert bobs.source == common_pb2.SOURCE_MODEL
