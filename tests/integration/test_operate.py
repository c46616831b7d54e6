"""Operating the running mesh from the CLI, as an operator would: faults injected live through the
gateway's routes, an automated canary that promotes a healthy version and rolls a failing one
back, and what `status` shows. Every test leaves no fault and the topology's weights behind."""
from __future__ import annotations

import json
import random
import re
import subprocess
import sys
import urllib.request
import uuid

import grpc
import pytest

from aimesh import canary, hotswap, overrides
from aimesh.chat.v1 import chat_pb2, chat_pb2_grpc
from aimesh.common.v1 import common_pb2
from aimesh.harness import RecommendTraffic
from aimesh.recommend.v1 import recommend_pb2, recommend_pb2_grpc
from aimesh.user.v1 import user_pb2, user_pb2_grpc
from tests.integration.client import bearer, recommender_breakers_closed, wait_for

CANARY_ARGS = ("--to", "v2", "--steps", "50,100", "--interval", "3s", "--min-calls", "15")


@pytest.fixture
def cli(mesh):
    """The CLI on the session mesh; whatever a test set is removed afterwards."""
    def run(*args: str):
        return mesh.cli(*args, timeout=120)
    yield run
    assert mesh.cli("fault", "clear").returncode == 0
    assert mesh.cli("canary", "abort", "recommend").returncode == 0
    assert overrides.load(mesh.state) == overrides.Overrides()


def recommend(mesh, who: str) -> recommend_pb2.RecommendResponse:
    """A Recommend no cached answer can serve (the exclude list is new each time)."""
    with mesh.channel() as channel:
        return recommend_pb2_grpc.RecommendServiceStub(channel).Recommend(
            recommend_pb2.RecommendRequest(limit=3, exclude_item_ids=[random.randint(100_000, 10**9)]),
            metadata=bearer(who), timeout=10)


def test_a_triton_abort_makes_recommend_fall_back_and_clearing_it_brings_the_model_back(mesh, cli, bob):
    assert recommend(mesh, bob).source == common_pb2.SOURCE_MODEL
    injected = cli("fault", "triton", "--model", "recommender", "--abort", "UNAVAILABLE")
    assert injected.returncode == 0, injected.stderr
    answer = recommend(mesh, bob)
    assert answer.source == common_pb2.SOURCE_FALLBACK
    assert "UNAVAILABLE" in answer.fallback_reason and "fault filter abort" in answer.fallback_reason
    status = cli("status")
    assert "fault   triton: abort UNAVAILABLE on 100% of calls (listener mesh, model recommender)" in status.stdout
    assert cli("fault", "clear").returncode == 0
    # A breaker that opened on the failures lets a probe through after its reset time: the model again.
    recommender_breakers_closed(mesh, bob)


def test_a_delay_past_the_route_timeout_gives_the_timeout(mesh, cli, bob):
    timeout_s = mesh.topo.services["user"].timeout_s
    assert cli("fault", "user", "--delay", f"{timeout_s + 2:g}s", "--listener", "edge").returncode == 0
    with mesh.channel() as channel, pytest.raises(grpc.RpcError) as timed_out:
        user_pb2_grpc.UserServiceStub(channel).GetProfile(
            user_pb2.GetProfileRequest(), metadata=bearer(bob), timeout=timeout_s * 10)
    assert timed_out.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert timed_out.value.details() == "downstream duration timeout"


def test_chat_says_when_it_answered_without_retrieval(mesh, cli, bob):
    """Only chat's calls to search fail (the fault names the caller): search itself is up."""
    assert cli("fault", "search", "--caller", "chat", "--abort", "UNAVAILABLE").returncode == 0
    with mesh.channel() as channel:
        replies = list(chat_pb2_grpc.ChatServiceStub(channel).Ask(
            chat_pb2.AskRequest(message=chat_pb2.UserMessage(text="a film about space", max_tokens=8)),
            metadata=bearer(bob), timeout=60))
    end = replies[-1].end
    assert end.retrieval_failure.startswith("UNAVAILABLE") and "fault filter abort" in end.retrieval_failure
    assert end.grounding == chat_pb2.GROUNDING_NONE
    assert not any(r.HasField("citations") and r.citations.citations for r in replies)


def test_a_fault_the_topology_cannot_have_is_one_line_and_exit_2(cli):
    refused = cli("fault", "recommend", "--abort", "UNAVAILABLE", "--version", "v9")
    assert refused.returncode == 2
    assert refused.stderr.strip() == "aimesh: recommend has no version 'v9' (its versions: v1, v2)"


def fresh_pro(mesh) -> str:
    """A new pro user: a rate-limit bucket of its own (and no history: answers are fallbacks)."""
    return mesh.token(sub=str(uuid.uuid4()), tier="pro")


def decisions(mesh) -> list[dict]:
    return canary.last_run(mesh.state, "recommend")


def test_a_healthy_canary_is_promoted_to_100_percent(mesh, cli):
    with RecommendTraffic(mesh, fresh_pro(mesh)) as traffic:
        rollout = cli("canary", "recommend", *CANARY_ARGS)
    assert rollout.returncode == 0, rollout.stdout + rollout.stderr
    assert [(d["decision"], d["step"]) for d in decisions(mesh)] == [
        ("start", None), ("promote", 50), ("promote", 100), ("done", 100)]
    assert overrides.load(mesh.state).weights == {"recommend": {"v1": 0, "v2": 100}}
    assert traffic.errors == {} and sum(traffic.outcomes.values()) > 30
    assert "weights recommend: v1 0%, v2 100%" in cli("status").stdout


def test_a_failing_canary_is_rolled_back_to_0_percent_with_the_reason_logged(mesh, cli):
    assert cli("fault", "recommend", "--version", "v2", "--abort", "UNAVAILABLE", "--percent", "50").returncode == 0
    with RecommendTraffic(mesh, fresh_pro(mesh)):
        rollout = cli("canary", "recommend", *CANARY_ARGS)
    assert rollout.returncode == 1
    start, rollback = decisions(mesh)
    assert (rollback["decision"], rollback["step"]) == ("rollback", 50)
    assert "errors" in rollback["reason"] and rollback["canary_window"]["errors"] > 0
    assert rollback["stable_window"]["errors"] == 0
    assert rollback["weights"] == {"v1": 100, "v2": 0}
    status = cli("canary", "status", "recommend")
    assert "recommend v2 at 50%: rollback - bad share" in status.stdout
    # No call reaches v2 any more: a hundred calls all answered by v1.
    with RecommendTraffic(mesh, fresh_pro(mesh)) as traffic:
        wait_for(lambda: sum(traffic.outcomes.values()) >= 100, timeout_s=60, what="100 calls")
    assert traffic.errors == {}
    assert json.loads(canary.log_path(mesh.state, "recommend").read_text().splitlines()[-1])["decision"] == "rollback"


# --- model hot-swap (aimesh models swap) -------------------------------------------------------

def inferences(mesh, version: str) -> float:
    """Triton's count of recommender inferences on a version."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{mesh.topo.infra.triton_metrics_port}/metrics",
                                  timeout=5).read().decode()
    found = re.search(rf'^nv_inference_count\{{model="recommender",version="{version}"\}} (\S+)$',
                      text, re.MULTILINE)
    return float(found[1]) if found else 0.0


@pytest.fixture
def served(mesh, cli):
    """The recommender versions Triton serves now; 1 and 2 again after the test, whatever it did."""
    admin = hotswap.Admin(mesh.topo, mesh.state)
    yield lambda: admin.served("recommender")
    if "3" in admin.served("recommender"):
        assert cli("models", "swap", "recommender", "--from", "3", "--to", "1").returncode == 0
    assert admin.served("recommender") == {"1", "2"}


def test_a_hot_swap_under_load_loses_no_call_and_no_answer_falls_back(mesh, cli, bob, served):
    with RecommendTraffic(mesh, bob, threads=4, pace_s=0.1) as traffic:
        wait_for(lambda: traffic.outcomes["model"] >= 20, timeout_s=30, what="the model answering")
        swapped = cli("models", "swap", "recommender", "--from", "1", "--to", "3")
        assert swapped.returncode == 0, swapped.stdout + swapped.stderr
        assert served() == {"2", "3"}
        wait_for(lambda: inferences(mesh, "3") >= 20, timeout_s=30, what="calls answered by version 3")
        back = cli("models", "swap", "recommender", "--from", "3", "--to", "1")
        assert back.returncode == 0, back.stdout + back.stderr
        assert served() == {"1", "2"}
    assert traffic.errors == {} and traffic.outcomes["fallback"] == 0, traffic.outcomes
    assert "unloaded recommender version 1; serving 2, 3" in swapped.stdout


def test_a_swap_to_a_version_that_is_not_there_changes_nothing(mesh, cli, served):
    refused = cli("models", "swap", "recommender", "--from", "1", "--to", "9")
    assert refused.returncode == 1
    assert refused.stderr.strip() == ("aimesh: recommender has no version 9 in Triton's repository "
                                      "(triton_models/recommender/9)")
    assert served() == {"1", "2"}


# --- the live view (aimesh top) ----------------------------------------------------------------

def test_top_renders_a_frame_of_the_running_mesh(mesh, cli, bob):
    recommend(mesh, bob)
    assert cli("fault", "search", "--caller", "chat", "--delay", "10ms").returncode == 0
    shown = subprocess.run([sys.executable, "-m", "aimesh", "top", "--once", "--interval", "0.5"],
                           env={**mesh.env, "COLUMNS": "80"}, capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0].startswith("aimesh top - ") and "unreachable" not in lines[0]
    assert max(len(line) for line in lines) <= 80 and "…" not in shown.stdout   # a terminal's width, whole
    for title in ("Routes (last", "Canary weights", "Injected faults", "Breakers", "Models (Triton)"):
        assert any(line.startswith(title) for line in lines), title
    for label in ("calls/s", "p50", "p99", "fallback", "SLO (p99)", "status", "avg batch", "avg queue ms",
                  "notify.ListNotifications", "99% 250ms", "recommend-v1 90%, recommend-v2 10%",
                  "search (mesh): delay 0.01s on 100%, from chat", "recommender-v1", "text_embedding"):
        assert label in shown.stdout, label
    assert re.search(r"^recommend\.Recommend +[0-9.]+ ", shown.stdout, re.M)   # its calls, a row


def test_the_overview_rpc_is_for_admins_only(mesh, admin, bob):
    from aimesh.ops.v1 import ops_pb2, ops_pb2_grpc
    with mesh.channel() as channel:
        overview = ops_pb2_grpc.OpsServiceStub(channel).GetOverview
        with pytest.raises(grpc.RpcError) as refused:
            overview(ops_pb2.GetOverviewRequest(), metadata=bearer(bob), timeout=10)
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        seen = overview(ops_pb2.GetOverviewRequest(), metadata=bearer(admin), timeout=10)
    assert {r.route for r in seen.routes} >= set(mesh.topo.slos)
    assert {m.model for m in seen.models} == {"text_embedding", "recommender", "chat_lm", "moderation"}
    assert not seen.unreachable


def test_an_interrupted_canary_leaves_the_weights_at_the_last_safe_step(mesh, cli):
    """SIGTERM mid-step (the step never gets its calls): back to the weights before the run."""
    rollout = subprocess.Popen([sys.executable, "-m", "aimesh", "canary", "recommend", "--steps", "50,100",
                                "--interval", "60s", "--min-calls", "1000000"], env=mesh.env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: overrides.load(mesh.state).weights.get("recommend") == {"v1": 50, "v2": 50},
                 timeout_s=30, what="the 50% step")
        rollout.terminate()
        assert rollout.wait(timeout=30) == 1
    finally:
        rollout.kill()
    assert canary.last_run(mesh.state, "recommend")[-1]["decision"] == "interrupted"
    assert overrides.load(mesh.state).weights["recommend"] == {"v1": 90, "v2": 10}
