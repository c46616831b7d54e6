"""Every service through the gateway with the generated stubs, on its real store."""
import json
import threading
import uuid

import grpc
import pytest

from aimesh.chat.v1 import chat_pb2, chat_pb2_grpc
from aimesh.common.v1 import common_pb2
from aimesh.notify.v1 import notify_pb2, notify_pb2_grpc
from aimesh.recommend.v1 import recommend_pb2, recommend_pb2_grpc
from aimesh.search.v1 import search_pb2, search_pb2_grpc
from aimesh.user.v1 import user_pb2
from services.chat.server import EARLIER_TURNS
from services.chat.store import ConversationStore, Turn
from services.kit import field_violations
from tests.integration.client import bearer, code_of, new_user, next_of_kind, wait_for


@pytest.fixture(scope="module")
def search(mesh):
    with mesh.channel() as channel:
        yield search_pb2_grpc.SearchServiceStub(channel)


def test_hybrid_search_finds_by_words_what_meaning_alone_ranks_low(search, users):
    """"A fantasy film.": no fantasy film is among the three closest by meaning (nor by exact cosine
    over every stored vector, checked when this case was chosen), but the word matches one's
    "Genres: Fantasy", so the fused ranking has one in its first three. Asked by a new user: the
    content a user had written is in their own results too."""
    _, token = new_user(users, "hybrid")

    def fantasy(mode) -> list[bool]:
        return ["genre:Fantasy" in r.document.metadata for r in search.Search(
            search_pb2.SearchRequest(query="A fantasy film.", page_size=3, mode=mode),
            metadata=bearer(token), timeout=5).results]
    assert not any(fantasy(search_pb2.SEARCH_MODE_SEMANTIC))
    assert any(fantasy(search_pb2.SEARCH_MODE_KEYWORD))
    assert any(fantasy(search_pb2.SEARCH_MODE_UNSPECIFIED))       # hybrid, the default


def test_an_unknown_search_mode_is_refused_naming_the_field(search, alice):
    with pytest.raises(grpc.RpcError) as refused:
        search.Search(search_pb2.SearchRequest(query="x", mode=99), metadata=bearer(alice), timeout=5)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "mode" in field_violations(refused.value)


def test_search_finds_the_demo_catalog_by_meaning_of_its_words(search, alice):
    reply = search.Search(search_pb2.SearchRequest(query="Star Wars", page_size=5,
                                                   mode=search_pb2.SEARCH_MODE_SEMANTIC),
                          metadata=bearer(alice), timeout=5)
    assert reply.results[0].document.title == "Star Wars"
    scores = [r.score for r in reply.results]
    assert scores == sorted(scores, reverse=True)


def test_search_filters_and_pages(search, alice):
    first = search.Search(search_pb2.SearchRequest(query="war", page_size=3,
                                                   filters={"genre:Comedy": "1"}),
                          metadata=bearer(alice), timeout=5)
    assert len(first.results) == 3 and first.next_page_token
    assert all(r.document.metadata["genre:Comedy"] == "1" for r in first.results)
    second = search.Search(search_pb2.SearchRequest(query="war", page_size=3, page_token=first.next_page_token,
                                                    filters={"genre:Comedy": "1"}),
                           metadata=bearer(alice), timeout=5)
    assert not {r.document.document_id for r in first.results} & {r.document.document_id for r in second.results}


def test_indexing_is_for_admins_and_upserts_by_id(search, alice, admin):
    doc = search_pb2.Document(document_id=f"doc-{uuid.uuid4().hex[:8]}", title="Zyxwv quokka",
                              text="a zyxwv quokka manual")
    request = search_pb2.IndexDocumentsRequest(documents=[doc])
    assert code_of(search.IndexDocuments, request, metadata=bearer(alice), timeout=10) == \
        grpc.StatusCode.PERMISSION_DENIED
    assert search.IndexDocuments(request, metadata=bearer(admin), timeout=10).indexed_count == 1
    found = search.Search(search_pb2.SearchRequest(query="zyxwv quokka", page_size=1),
                          metadata=bearer(alice), timeout=5)
    assert found.results[0].document.document_id == doc.document_id
    deleted = search.DeleteDocument(search_pb2.DeleteDocumentRequest(document_id=doc.document_id),
                                    metadata=bearer(admin), timeout=5)
    assert deleted.deleted


def test_recommend_answers_a_new_user_from_popular_items_marked_fallback(mesh, users):
    _, token = new_user(users, "cold")
    with mesh.channel() as channel:
        reply = recommend_pb2_grpc.RecommendServiceStub(channel).Recommend(
            recommend_pb2.RecommendRequest(limit=5, exclude_item_ids=[50]), metadata=bearer(token),
            timeout=5)
    assert len(reply.items) == 5 and all(i.title for i in reply.items)
    assert 50 not in [i.item_id for i in reply.items]
    assert reply.source == common_pb2.SOURCE_FALLBACK and "cold start" in reply.fallback_reason


def test_chat_ask_streams_the_models_tokens_then_citations_and_end(mesh, alice):
    with mesh.channel() as channel:
        pieces = list(chat_pb2_grpc.ChatServiceStub(channel).Ask(
            chat_pb2.AskRequest(message=chat_pb2.UserMessage(text="Tell me about Star Wars", max_tokens=24)),
            metadata=bearer(alice), timeout=120))
    kinds = [p.WhichOneof("kind") for p in pieces]
    assert kinds.count("delta") >= 3 and kinds[-2:] == ["citations", "end"]
    assert any(c.title == "Star Wars" for c in pieces[-2].citations.citations)
    end = pieces[-1].end
    assert end.source == common_pb2.SOURCE_MODEL and end.fallback_reason == ""
    assert end.conversation_id and end.finish_reason in (chat_pb2.FINISH_REASON_STOP,
                                                         chat_pb2.FINISH_REASON_LENGTH)
    # The answer begins with the best retrieved entry, which the model continues; the post-check
    # either finds it grounded or appends a correction naming that entry again.
    assert pieces[0].delta.text == "I suggest Star Wars (1977), because"
    corrected = end.grounding == chat_pb2.GROUNDING_CORRECTED
    assert end.grounding == chat_pb2.GROUNDING_CITED or corrected
    # the engine's token counts: a model's piece is at most one token (llama.cpp holds back a
    # partial character or a possible stop sequence), and the prompt holds the catalog entries
    assert kinds.count("delta") - 1 - corrected <= end.usage.completion_tokens <= 24
    assert end.usage.prompt_tokens > 50


def test_chat_stream_resumes_only_own_conversations(mesh, alice, bob):
    def ask(text, conversation_id=""):
        return chat_pb2.UserMessage(conversation_id=conversation_id, text=text, max_tokens=8)

    with mesh.channel() as channel:
        chat = chat_pb2_grpc.ChatServiceStub(channel)
        first = list(chat.Ask(chat_pb2.AskRequest(message=ask("Fargo")), metadata=bearer(alice), timeout=120))[-1].end
        again = chat.Chat(iter([chat_pb2.ChatRequest(message=ask("and Contact?", first.conversation_id))]),
                          metadata=bearer(alice), timeout=120)
        assert list(again)[-1].end.conversation_id == first.conversation_id
        stolen = chat.Ask(chat_pb2.AskRequest(message=ask("hi", first.conversation_id)), metadata=bearer(bob),
                          timeout=10)
        assert code_of(list, stolen) == grpc.StatusCode.NOT_FOUND


def test_a_chat_stream_is_one_conversation(mesh, alice):
    """Its second message names no conversation and goes on in the first one's; a new stream
    starts a new one."""
    def ask(text):
        return chat_pb2.ChatRequest(message=chat_pb2.UserMessage(text=text, max_tokens=4))

    with mesh.channel() as channel:
        chat = chat_pb2_grpc.ChatServiceStub(channel)
        ends = [p.end for p in chat.Chat(iter([ask("Fargo"), ask("and who is in it?")]), metadata=bearer(alice),
                                         timeout=120) if p.WhichOneof("kind") == "end"]
        assert len(ends) == 2 and ends[0].conversation_id and ends[1].conversation_id == ends[0].conversation_id
        [other] = [p.end for p in chat.Chat(iter([ask("Heat")]), metadata=bearer(alice), timeout=120)
                   if p.WhichOneof("kind") == "end"]
        assert other.conversation_id != ends[0].conversation_id


async def test_the_model_sees_a_conversation_in_windows_moving_a_few_turns_at_a_time(postgres):
    """The last 3 to 5 turns, the oldest leaving 3 at a time: for 3 turns in a row a prompt begins
    as the one before did, so the engine goes on from what it read then. Each turn keeps the catalog
    entries it was asked with."""
    async def no_audit(connection) -> None:
        pass
    store = ConversationStore(await postgres("chat"))
    conversation = await store.open(str(uuid.uuid4()), "")
    seen = []
    for n in range(9):
        seen.append([turn.question for turn in await store.window(conversation, EARLIER_TURNS)])
        await store.add_turn(conversation, Turn(f"q{n}", f"1. entry {n}", f"a{n}"), "FINISH_REASON_STOP",
                             "SOURCE_MODEL", no_audit)
    assert [len(window) for window in seen] == [0, 1, 2, 3, 4, 5, 3, 4, 5]
    assert seen[5] == ["q0", "q1", "q2", "q3", "q4"] and seen[8] == ["q3", "q4", "q5", "q6", "q7"]
    assert (await store.window(conversation, EARLIER_TURNS))[-1] == Turn("q8", "1. entry 8", "a8")


def test_a_cancelled_turn_ends_cancelled_and_stops_the_generation(mesh, bob):
    """CancelTurn after the first token: the turn ends CANCELLED, and Triton's model counts a
    cancelled generation (it stopped generating), polled with a bound. An answer is one paragraph,
    so a short one can end on its own while the cancel is on its way (it did once in CI, on busy
    cores): then Triton counts it as finished, and the turn is tried again, at most ATTEMPTS times."""
    from tests.integration.test_chat_lm import generations

    def ended() -> dict[str, float]:
        return {reason: generations(mesh, reason) for reason in ("cancelled", "stop", "length")}

    def turn() -> chat_pb2.TurnEnd:
        cancel = threading.Event()

        def requests():
            yield chat_pb2.ChatRequest(message=chat_pb2.UserMessage(
                text="Write a very long story about every film in the catalog.", max_tokens=400))
            cancel.wait(120)
            yield chat_pb2.ChatRequest(cancel=chat_pb2.CancelTurn())

        with mesh.channel() as channel:
            replies = chat_pb2_grpc.ChatServiceStub(channel).Chat(requests(), metadata=bearer(bob), timeout=120)
            for reply in replies:
                if reply.WhichOneof("kind") == "delta":
                    cancel.set()
                if reply.WhichOneof("kind") == "end":
                    break
            replies.cancel()
        return reply.end

    ATTEMPTS = 3
    for _ in range(ATTEMPTS):
        before = ended()
        end = turn()
        assert end.finish_reason == chat_pb2.FINISH_REASON_CANCELLED
        assert 1 <= end.usage.completion_tokens < 400
        after = wait_for(lambda before=before: (now := ended()) != before and now, timeout_s=10,
                         what="Triton to count the generation as ended")
        if after["cancelled"] > before["cancelled"]:
            return
    pytest.fail(f"each of {ATTEMPTS} generations ended on its own before its cancel reached Triton")


def test_registration_and_purchase_events_become_notifications(mesh, users):
    _, token = new_user(users, "events")
    with mesh.channel() as channel:
        inbox = notify_pb2_grpc.NotificationServiceStub(channel)
        live = inbox.Subscribe(notify_pb2.SubscribeRequest(), metadata=bearer(token), timeout=20)
        live.initial_metadata()   # subscribed from here on

        def listed():
            return inbox.ListNotifications(notify_pb2.ListNotificationsRequest(),
                                           metadata=bearer(token), timeout=5).notifications
        [welcome] = wait_for(listed, what="the user.registered notification")
        assert welcome.kind == "user.registered" and not welcome.read
        users.RecordPurchase(user_pb2.RecordPurchaseRequest(item_id=50), metadata=bearer(token), timeout=5)
        arrived = next_of_kind(live, "user.purchased")
        live.cancel()
        assert "50" in arrived.body
        marked = inbox.MarkRead(notify_pb2.MarkReadRequest(notification_ids=[welcome.notification_id]),
                                metadata=bearer(token), timeout=5)
        assert marked.updated_count == 1


@pytest.mark.parametrize("call, field", [
    (lambda s, m: s["users"].Register(user_pb2.RegisterRequest(email="not-an-email", password="x" * 10,
                                                                display_name="X"), timeout=5), "email"),
    (lambda s, m: s["users"].Register(user_pb2.RegisterRequest(email="a@b.co", password="short",
                                                                display_name="X"), timeout=5), "password"),
    (lambda s, m: s["users"].RecordPurchase(user_pb2.RecordPurchaseRequest(item_id=0), metadata=m,
                                            timeout=5), "item_id"),
    (lambda s, m: s["search"].Search(search_pb2.SearchRequest(query="x", page_size=1000), metadata=m,
                                     timeout=5), "page_size"),
    (lambda s, m: s["search"].Search(search_pb2.SearchRequest(query="  "), metadata=m, timeout=5), "query"),
    (lambda s, m: s["recommend"].Recommend(recommend_pb2.RecommendRequest(limit=-1), metadata=m,
                                           timeout=5), "limit"),
    (lambda s, m: list(s["chat"].Ask(chat_pb2.AskRequest(message=chat_pb2.UserMessage(text="")),
                                     metadata=m, timeout=5)), "message.text"),
    (lambda s, m: s["notify"].MarkRead(notify_pb2.MarkReadRequest(notification_ids=["nope"]),
                                       metadata=m, timeout=5), "notification_ids"),
])
def test_bad_input_is_invalid_argument_naming_the_field(mesh, alice, call, field):
    from aimesh.user.v1 import user_pb2_grpc
    with mesh.channel() as channel:
        stubs = {"users": user_pb2_grpc.UserServiceStub(channel),
                 "search": search_pb2_grpc.SearchServiceStub(channel),
                 "recommend": recommend_pb2_grpc.RecommendServiceStub(channel),
                 "chat": chat_pb2_grpc.ChatServiceStub(channel),
                 "notify": notify_pb2_grpc.NotificationServiceStub(channel)}
        with pytest.raises(grpc.RpcError) as failure:
            call(stubs, bearer(alice))
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in field_violations(failure.value)


def test_bulk_index_job_runs_in_the_background_and_notifies_its_submitter(search, admin, alice, mesh):
    documents = [search_pb2.Document(document_id=f"bulk-{uuid.uuid4().hex[:6]}-{i}",
                                     title=f"Bulk{i} glorbnak", text="a glorbnak almanac")
                 for i in range(150)]
    request = search_pb2.SubmitIndexJobRequest(documents=documents)
    assert code_of(search.SubmitIndexJob, request, metadata=bearer(alice), timeout=10) == \
        grpc.StatusCode.PERMISSION_DENIED
    job = search.SubmitIndexJob(request, metadata=bearer(admin), timeout=10).job
    assert job.total_count == 150 and job.state in (search_pb2.JOB_STATE_QUEUED, search_pb2.JOB_STATE_RUNNING,
                                                    search_pb2.JOB_STATE_SUCCEEDED)

    def finished():
        seen = search.GetJob(search_pb2.GetJobRequest(job_id=job.job_id), metadata=bearer(admin), timeout=5).job
        return seen if seen.state == search_pb2.JOB_STATE_SUCCEEDED else None
    done = wait_for(finished, timeout_s=60, what="the index job to finish")
    assert done.done_count == 150
    assert code_of(search.GetJob, search_pb2.GetJobRequest(job_id=job.job_id), metadata=bearer(alice),
                   timeout=5) == grpc.StatusCode.NOT_FOUND   # not alice's job
    # The 150 documents differ only in a number, which a semantic embedder barely sees: document 7
    # is found by its own full text (what was embedded), which ranks it first.
    found = search.Search(search_pb2.SearchRequest(query="Bulk7 glorbnak\na glorbnak almanac",
                                                   page_size=3),
                          metadata=bearer(alice), timeout=5)
    assert any(r.document.document_id == documents[7].document_id for r in found.results)
    with mesh.channel() as channel:
        inbox = notify_pb2_grpc.NotificationServiceStub(channel)
        wait_for(lambda: [n for n in inbox.ListNotifications(notify_pb2.ListNotificationsRequest(page_size=100),
                                                             metadata=bearer(admin), timeout=5).notifications
                          if n.kind == "job.completed" and job.job_id in n.body],
                 what="the job.completed notification")


def test_ai_decisions_are_audited_and_an_admin_reads_them_back(mesh, users):
    _, token = new_user(users, "audited")
    user_id = users.GetProfile(user_pb2.GetProfileRequest(), metadata=bearer(token), timeout=5).profile.user_id
    with mesh.channel() as channel:
        recommend_pb2_grpc.RecommendServiceStub(channel).Recommend(
            recommend_pb2.RecommendRequest(limit=3), metadata=bearer(token), timeout=5)
        list(chat_pb2_grpc.ChatServiceStub(channel).Ask(
            chat_pb2.AskRequest(message=chat_pb2.UserMessage(text="Fargo")), metadata=bearer(token), timeout=10))

    def audited() -> list[dict]:   # relayed from each service's outbox just after its commit
        audit = mesh.cli("audit", user_id)
        assert audit.returncode == 0, audit.stderr
        # how far back the trail reaches, under the topology's retention (30 days)
        assert "audit trail from 20" in audit.stderr and "kept 30 days" in audit.stderr
        assert "eof_received" not in audit.stderr     # asyncio's notice on a closed TLS connection
        found = [json.loads(line) for line in audit.stdout.splitlines() if line]
        return found if {d["subject"] for d in found} == {"ai.decisions.recommend", "ai.decisions.chat"} else []
    decisions = wait_for(audited, interval_s=0.5, what="both decisions in AI_DECISIONS")
    recommended = next(d for d in decisions if d["subject"] == "ai.decisions.recommend")
    assert recommended["model"] == "recommender" and len(recommended["outputIds"]) == 3
    assert len(recommended["inputDigest"]) == 64 and len(recommended["traceId"]) == 32
    assert all(d["userId"] == user_id for d in decisions)
    nobody = mesh.cli("audit", str(uuid.uuid4()))
    assert nobody.returncode == 0 and not nobody.stdout and "no decision in the trail is for" in nobody.stderr


def recommend(channel, token: str, *, version: str = "", limit: int = 10, exclude=()):
    metadata = bearer(token) + ([("x-model-version", version)] if version else [])
    return recommend_pb2_grpc.RecommendServiceStub(channel).Recommend(
        recommend_pb2.RecommendRequest(limit=limit, exclude_item_ids=list(exclude)),
        metadata=metadata, timeout=5)


def model_answer(channel, token: str, **kwargs):
    """The next answer that comes from the model (the history consumer is asynchronous)."""
    return wait_for(lambda: (r := recommend(channel, token, **kwargs)).source == common_pb2.SOURCE_MODEL and r,
                    what="an answer from the recommender model")


def test_a_user_with_history_gets_the_pinned_model_versions_answer(mesh, users, bob):
    users.RecordPurchase(user_pb2.RecordPurchaseRequest(item_id=50), metadata=bearer(bob), timeout=5)
    with mesh.channel() as channel:
        for version in ("v1", "v2"):
            reply = model_answer(channel, bob, version=version)
            assert reply.model_version == version and reply.fallback_reason == ""
            assert len(reply.items) == 10 and all(i.title for i in reply.items)
            assert 50 not in [i.item_id for i in reply.items]   # never what they already have


def test_a_pin_of_a_version_not_served_is_refused_naming_the_header(mesh, bob):
    with mesh.channel() as channel:
        try:
            recommend(channel, bob, version="v9")
        except grpc.RpcError as refused:
            assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert field_violations(refused) == {"x-model-version": "no version 'v9' is served"}
        else:
            raise AssertionError("a pin of v9 was answered")


def test_a_purchase_changes_the_next_recommendations(mesh, users, bob):
    with mesh.channel() as channel:
        users.RecordPurchase(user_pb2.RecordPurchaseRequest(item_id=172), metadata=bearer(bob), timeout=5)
        before = model_answer(channel, bob, version="v1")
        bought = before.items[0].item_id
        users.RecordPurchase(user_pb2.RecordPurchaseRequest(item_id=bought), metadata=bearer(bob), timeout=5)
        after = wait_for(lambda: (r := recommend(channel, bob, version="v1")).source == common_pb2.SOURCE_MODEL
                         and bought not in [i.item_id for i in r.items] and r,
                         what="recommendations that reflect the purchase")
    assert [i.item_id for i in after.items] != [i.item_id for i in before.items]
