"""The content saga through the gateway: a prompt becomes published text found by its owner
alone; an unsafe prompt or text is rejected with nothing left behind; cancel and delete undo
what was done; two instances share the work without running a step twice."""
import concurrent.futures

import grpc
import pytest

from aimesh import infra
from aimesh.search.v1 import search_pb2, search_pb2_grpc
from services.kit import field_violations
from tests.integration.client import bearer, new_user, stored, wait_for
from tests.integration.content import (
    HARMLESS,
    UNSAFE_PROMPT,
    UNSAFE_TEXT,
    C,
    create,
    indexed,
    notices,
    settled,
    steps,
    stub,
)


@pytest.fixture(scope="module")
def writer(users):
    return new_user(users, "writer")[1]


@pytest.fixture(scope="module")
def reader(users):
    return new_user(users, "reader")[1]


@pytest.fixture(scope="module")
def published(mesh, writer):
    with mesh.channel() as channel:
        created = create(channel, writer)
        assert created.state == C.CONTENT_STATE_DRAFT and steps(created)["reserve"] == "DONE"
        return settled(channel, writer, created.content_id)


def test_a_prompt_is_checked_written_indexed_and_published(published):
    content, seen = published
    assert content.state == C.CONTENT_STATE_PUBLISHED, content.reason
    assert set(steps(content).values()) == {"DONE"} and all(s.attempts == 1 for s in content.steps)
    assert content.text.strip() and not content.reason
    assert seen[0] == C.CONTENT_STATE_DRAFT and seen[-1] == C.CONTENT_STATE_PUBLISHED


def test_published_content_is_found_by_its_owner_alone(mesh, published, writer, reader):
    content, _ = published
    with mesh.channel() as channel:
        assert indexed(channel, writer, content)
        assert not indexed(channel, reader, content)   # nor in the reader's chat retrieval: same search
        mine = stub(channel).ListContent(C.ListContentRequest(), metadata=bearer(writer), timeout=10).contents
        assert [c.content_id for c in mine] == [content.content_id]
        assert not stub(channel).ListContent(C.ListContentRequest(), metadata=bearer(reader), timeout=10).contents
        with pytest.raises(grpc.RpcError) as hidden:
            stub(channel).GetContent(C.GetContentRequest(content_id=content.content_id),
                                     metadata=bearer(reader), timeout=10)
        assert hidden.value.code() == grpc.StatusCode.NOT_FOUND


def test_its_owner_is_notified_once(mesh, published, writer):
    with mesh.channel() as channel:
        told = wait_for(lambda: notices(channel, writer, "content.published"), timeout_s=30,
                        what="the published notice")
    assert len(told) == 1 and "published" in told[0].title


def test_an_unsafe_prompt_is_rejected_before_anything_is_written(mesh, users):
    _, token = new_user(users, "unsafe-prompt")
    with mesh.channel() as channel:
        content, _ = settled(channel, token, create(channel, token, UNSAFE_PROMPT).content_id)
        assert content.state == C.CONTENT_STATE_REJECTED
        assert "prompt was judged unsafe" in content.reason
        assert steps(content) == {"reserve": "DONE", "check_prompt": "FAILED", "generate": "PENDING",
                                  "check_text": "PENDING", "index": "PENDING", "publish": "PENDING"}
        assert not indexed(channel, token, content) and not content.text
        told = wait_for(lambda: notices(channel, token, "content.rejected"), timeout_s=30, what="the notice")
        assert "unsafe" in told[0].body and not notices(channel, token, "content.published")


def test_an_unsafe_text_is_rejected_and_its_generation_discarded(mesh, users):
    _, token = new_user(users, "unsafe-text")
    with mesh.channel() as channel:
        content, _ = settled(channel, token, create(channel, token, UNSAFE_TEXT, C.CONTENT_KIND_STORY).content_id)
        assert content.state == C.CONTENT_STATE_REJECTED, (content.reason, content.steps)
        assert "text was judged unsafe" in content.reason
        assert steps(content) == {"reserve": "DONE", "check_prompt": "DONE", "generate": "COMPENSATED",
                                  "check_text": "FAILED", "index": "PENDING", "publish": "PENDING"}
        assert not indexed(channel, token, content) and not content.text
        assert stored(mesh, "SELECT draft FROM content.contents WHERE id = $1::uuid",
                      content.content_id)["draft"] is None
        wait_for(lambda: notices(channel, token, "content.rejected"), timeout_s=30, what="the notice")
        assert not notices(channel, token, "content.published")


def test_a_cancel_while_indexing_removes_the_index_entry(mesh, users):
    """Indexing is slowed (an injected delay on search's east-west route), the owner cancels while
    it runs: the entry it made is removed and the text discarded."""
    _, token = new_user(users, "canceller")
    slowed = mesh.cli("fault", "search", "--delay", "2s", "--caller", "content")   # under search's 3 s timeout
    assert slowed.returncode == 0, slowed.stderr
    try:
        with mesh.channel() as channel:
            created = create(channel, token)
            wait_for(lambda: steps(stub(channel).GetContent(
                C.GetContentRequest(content_id=created.content_id), metadata=bearer(token), timeout=10).content
            )["index"] == "RUNNING", timeout_s=120, interval_s=0.2, what="the index step running")
            stub(channel).CancelContent(C.CancelContentRequest(content_id=created.content_id),
                                        metadata=bearer(token), timeout=10)
            content, _ = settled(channel, token, created.content_id)
    finally:
        assert mesh.cli("fault", "clear", "search").returncode == 0
    with mesh.channel() as channel:
        assert content.state == C.CONTENT_STATE_CANCELLED and content.reason == "cancelled by its owner"
        assert steps(content)["index"] == "COMPENSATED" and steps(content)["generate"] == "COMPENSATED"
        assert not indexed(channel, token, content)
        with pytest.raises(grpc.RpcError) as final:
            stub(channel).CancelContent(C.CancelContentRequest(content_id=created.content_id),
                                        metadata=bearer(token), timeout=10)
        assert final.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_deleting_published_content_removes_it_from_search(mesh, users):
    _, token = new_user(users, "deleter")
    with mesh.channel() as channel:
        content, _ = settled(channel, token, create(channel, token).content_id)
        assert content.state == C.CONTENT_STATE_PUBLISHED and indexed(channel, token, content)
        delete = stub(channel).DeleteContent
        assert delete(C.DeleteContentRequest(content_id=content.content_id), metadata=bearer(token), timeout=10).deleted
        assert not indexed(channel, token, content)
        gone = stub(channel).GetContent(C.GetContentRequest(content_id=content.content_id),
                                        metadata=bearer(token), timeout=10).content
        assert gone.state == C.CONTENT_STATE_DELETED and not gone.text
        assert not delete(C.DeleteContentRequest(content_id=content.content_id), metadata=bearer(token),
                          timeout=10).deleted   # again: not an error


def test_a_user_may_have_two_pieces_being_written(mesh, users):
    _, token = new_user(users, "eager")
    with mesh.channel() as channel:
        running = [create(channel, token) for _ in range(2)]
        with pytest.raises(grpc.RpcError) as third:
            create(channel, token)
        assert third.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "you already have 2 pieces being written" in third.value.details()
        for content in running:
            settled(channel, token, content.content_id)


def test_two_instances_share_the_sagas_and_run_no_step_twice(mesh, users):
    tokens = [new_user(users, f"busy{i}")[1] for i in range(3)]
    with mesh.channel() as channel:
        made = [(token, create(channel, token, f"{HARMLESS}, part {n}")) for token in tokens for n in range(2)]
        with concurrent.futures.ThreadPoolExecutor(len(made)) as pool:
            ended = list(pool.map(lambda made: settled(channel, made[0], made[1].content_id)[0], made))
    assert all(c.state == C.CONTENT_STATE_PUBLISHED for c in ended), [c.reason for c in ended]
    assert all(s.attempts == 1 for c in ended for s in c.steps)
    assert {s.instance for c in ended for s in c.steps} == {"content-1", "content-2"}


def test_bad_requests_name_the_field(mesh, writer):
    with mesh.channel() as channel:
        for request, field in [(C.CreateContentRequest(prompt=" "), "prompt"),
                               (C.CreateContentRequest(prompt="x", kind=42), "kind")]:
            with pytest.raises(grpc.RpcError) as refused:
                stub(channel).CreateContent(request, metadata=bearer(writer), timeout=10)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert field in field_violations(refused.value)
        with pytest.raises(grpc.RpcError) as refused:
            stub(channel).GetContent(C.GetContentRequest(content_id="not-an-id"), metadata=bearer(writer), timeout=10)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "content_id" in field_violations(refused.value)


def test_only_content_svc_indexes_for_a_user_and_only_owned_documents(mesh, published):
    """On the east-west listener without a user token: the operator is refused; content-svc's
    workload must name an owner and may not overwrite a catalog document."""
    content, _ = published
    document = search_pb2.Document(document_id="movie-1", title="Overwritten", text="x")
    request = search_pb2.IndexDocumentsRequest(documents=[document])
    with mesh.channel(mesh.mesh_listener) as operator:
        with pytest.raises(grpc.RpcError) as refused:
            search_pb2_grpc.SearchServiceStub(operator).IndexDocuments(request, timeout=10)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    content_svc = infra.as_workload(mesh.topo, mesh.state_dir, "content")
    with mesh.secure_channel(mesh.mesh_listener, "gateway", content_svc) as channel:
        index = search_pb2_grpc.SearchServiceStub(channel).IndexDocuments
        with pytest.raises(grpc.RpcError) as ownerless:
            index(request, timeout=10)
        assert ownerless.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "documents[0].owner_id" in field_violations(ownerless.value)
        document.owner_id = content.owner_id
        with pytest.raises(grpc.RpcError) as catalog:
            index(search_pb2.IndexDocumentsRequest(documents=[document]), timeout=10)
        assert catalog.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.RpcError) as not_allowed:   # the allow list: content may not Search
            search_pb2_grpc.SearchServiceStub(channel).Search(search_pb2.SearchRequest(query="x"), timeout=10)
        assert not_allowed.value.code() == grpc.StatusCode.PERMISSION_DENIED
