"""The content saga survives its instance dying: at a crash point after each step (set by
configuration, the process exits at once as a kill would), or killed in the middle of writing;
the other instance takes the saga over once its lease runs out, and it ends with its invariants
held: published ⇔ indexed ⇔ notified, once. A model that stops answering mid-saga fails it, undone."""
import grpc
import pytest

from aimesh import services
from aimesh.supervisor import Supervisor
from tests.integration.client import bearer, new_user, wait_for
from tests.integration.content import C, create, indexed, notices, steps, stub

INSTANCES = ("content-1", "content-2")
POINTS = ["after:check_prompt", "after:generate", "after:check_text", "after:index", "after:publish",
          "after:undo_index"]


def current(channel, token: str, content_id: str):
    """The piece now, or None while the gateway has no live instance to ask."""
    try:
        return stub(channel).GetContent(C.GetContentRequest(content_id=content_id),
                                        metadata=bearer(token), timeout=10).content
    except grpc.RpcError as error:
        assert error.code() == grpc.StatusCode.UNAVAILABLE, error
        return None


def final(channel, token: str, content_id: str):
    def ended():
        content = current(channel, token, content_id)
        return content if content and content.state in {C.CONTENT_STATE_PUBLISHED, C.CONTENT_STATE_REJECTED,
                                                         C.CONTENT_STATE_FAILED, C.CONTENT_STATE_CANCELLED} else None
    return wait_for(ended, timeout_s=180, interval_s=0.5, what="the saga's end")


def dead(mesh) -> list[str]:
    return [name for name in INSTANCES if Supervisor(mesh.state_dir).pid(name) is None]


@pytest.fixture
def restart_the_dead(mesh):
    yield
    services.crash_points(mesh.state_dir).write_text("")
    assert mesh.cli("fault", "clear").returncode == 0
    for name in dead(mesh):
        started = mesh.cli("start", name)
        assert started.returncode == 0, started.stderr


def invariants_held(channel, token: str, content) -> None:
    """Published ⇔ indexed ⇔ notified once; anything else: not indexed, not announced as published."""
    if content.state == C.CONTENT_STATE_PUBLISHED:
        assert indexed(channel, token, content) and content.text
        told = wait_for(lambda: notices(channel, token, "content.published"), timeout_s=30, what="the notice")
        assert len(told) == 1
    else:
        assert not indexed(channel, token, content) and not content.text
        assert not notices(channel, token, "content.published")


@pytest.mark.parametrize("point", POINTS)
def test_a_saga_resumes_after_its_instance_dies_at(mesh, users, restart_the_dead, point):
    _, token = new_user(users, "crash")
    crash_points = services.crash_points(mesh.state_dir)
    crash_points.write_text(f"content:{point}\n")
    undoing = point == "after:undo_index"
    if undoing:   # a cancel while indexing (slowed down) makes the saga undo its index entry
        assert mesh.cli("fault", "search", "--delay", "2s", "--caller", "content").returncode == 0
    with mesh.channel() as channel:
        created = create(channel, token)
        if undoing:
            wait_for(lambda: steps(current(channel, token, created.content_id) or created)["index"] == "RUNNING",
                     timeout_s=120, interval_s=0.1, what="the index step running")
            stub(channel).CancelContent(C.CancelContentRequest(content_id=created.content_id),
                                        metadata=bearer(token), timeout=10)
        wait_for(lambda: "content:" not in crash_points.read_text(), timeout_s=120, what=f"the crash {point}")
        gone = wait_for(lambda: dead(mesh), timeout_s=10, what="the instance's exit")
        content = final(channel, token, created.content_id)   # resumed by the other instance
        invariants_held(channel, token, content)
    assert len(gone) == 1
    if undoing:
        assert content.state == C.CONTENT_STATE_CANCELLED, content.reason
        assert steps(content)["index"] == "COMPENSATED" and steps(content)["generate"] == "COMPENSATED"
    else:
        assert content.state == C.CONTENT_STATE_PUBLISHED, content.reason
        assert all(s.attempts == 1 for s in content.steps)   # resumed after the recorded step, none redone


def test_a_saga_resumes_when_its_instance_is_killed_while_writing(mesh, users, restart_the_dead):
    _, token = new_user(users, "killed")
    with mesh.channel() as channel:
        created = create(channel, token)
        writing = wait_for(lambda: next((s for s in (current(channel, token, created.content_id) or created).steps
                                         if s.name == "generate" and s.state == C.STEP_STATE_RUNNING), None),
                           timeout_s=60, interval_s=0.05, what="the generate step running")
        assert mesh.cli("stop", writing.instance, "--kill").returncode == 0
        content = final(channel, token, created.content_id)
        invariants_held(channel, token, content)
    assert content.state == C.CONTENT_STATE_PUBLISHED, content.reason
    generate = next(s for s in content.steps if s.name == "generate")
    assert generate.attempts == 2 and generate.instance != writing.instance   # written again, elsewhere


def test_a_model_down_mid_saga_fails_it_and_undoes_what_was_done(mesh, users, restart_the_dead):
    """Triton's moderation model stops answering (an injected abort on its calls) while the text is
    being written: the text check fails its 1 + 2 tries, the saga ends FAILED and the written text
    is discarded; nothing is indexed; the owner is told once."""
    _, token = new_user(users, "modelless")
    # The writing is held back 3 s first (a delay on chat_lm's calls), so the abort, which replaces
    # that fault, is surely in place before the text is checked.
    assert mesh.cli("fault", "triton", "--delay", "3s", "--model", "chat_lm").returncode == 0
    with mesh.channel() as channel:
        created = create(channel, token)
        wait_for(lambda: steps(current(channel, token, created.content_id) or created)["generate"] == "RUNNING",
                 timeout_s=60, interval_s=0.05, what="the generate step running")
        down = mesh.cli("fault", "triton", "--abort", "UNAVAILABLE", "--model", "moderation")
        assert down.returncode == 0, down.stderr
        content = final(channel, token, created.content_id)
        assert content.state == C.CONTENT_STATE_FAILED and "check_text failed" in content.reason, content.reason
        check = next(s for s in content.steps if s.name == "check_text")
        assert check.state == C.STEP_STATE_FAILED and check.attempts == 3   # 1 + 2 retries
        assert steps(content)["generate"] == "COMPENSATED" and steps(content)["index"] == "PENDING"
        invariants_held(channel, token, content)
        told = wait_for(lambda: notices(channel, token, "content.failed"), timeout_s=30, what="the notice")
        assert len(told) == 1
