"""The local runner and the gateway as a user meets them: grpcurl, reflection, health, `up` twice."""
import json
import re
import subprocess
import urllib.request

import pytest

from aimesh.paths import venv_bin
from aimesh.services import serving


def grpcurl(mesh, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([venv_bin("grpcurl"), "-plaintext", *args], capture_output=True,
                          text=True, timeout=20)


def test_reflection_through_the_gateway_lists_every_service(mesh):
    listed = grpcurl(mesh, mesh.gateway, "list")
    assert listed.returncode == 0, listed.stderr
    for service in ("aimesh.user.v1.UserService", "aimesh.search.v1.SearchService",
                    "aimesh.recommend.v1.RecommendService", "aimesh.chat.v1.ChatService",
                    "aimesh.notify.v1.NotificationService"):
        assert service in listed.stdout.split()


def test_grpcurl_describes_and_calls_through_the_gateway_with_a_token(mesh, alice):
    described = grpcurl(mesh, mesh.gateway, "describe", "aimesh.recommend.v1.RecommendService")
    assert "rpc Recommend" in described.stdout, described.stderr
    called = grpcurl(mesh, "-H", f"authorization: Bearer {alice}", "-d", '{"limit": 2}',
                     mesh.gateway, "aimesh.recommend.v1.RecommendService/Recommend")
    assert called.returncode == 0, called.stderr
    assert len(json.loads(called.stdout)["items"]) == 2


def test_grpcurl_shows_which_field_a_refusal_names(mesh, alice):
    """The refusal's google.rpc.BadRequest detail is decoded through the gateway's reflection too
    (grpcurl looks its type up there), not printed as raw bytes."""
    refused = grpcurl(mesh, "-H", f"authorization: Bearer {alice}", "-d", '{"limit": 1000}',
                      mesh.gateway, "aimesh.recommend.v1.RecommendService/Recommend")
    assert refused.returncode != 0 and "InvalidArgument" in refused.stderr
    assert "not recognized" not in refused.stderr
    assert re.search(r'"field":\s*"limit"', refused.stderr), refused.stderr


def test_grpcurl_without_a_token_is_unauthenticated(mesh):
    called = grpcurl(mesh, mesh.gateway, "aimesh.user.v1.UserService/GetProfile")
    assert called.returncode != 0 and "Unauthenticated" in called.stderr


def test_every_instance_reports_serving_on_grpc_health(mesh):
    """On the plaintext probe port, the only one a probe without a certificate can use."""
    for service, instance in mesh.topo.instances():
        assert serving(f"127.0.0.1:{instance.probe_port}", service.grpc_services[0]) or \
            service.name == "catalog", instance.name
    assert serving(mesh.gateway)   # the gateway's own health, through Envoy


def test_status_reports_every_component_running(mesh):
    status = mesh.cli("status")
    assert status.returncode == 0, status.stdout
    assert "stopped" not in status.stdout


def test_up_while_running_fails_clearly(mesh):
    again = mesh.cli("up")
    assert again.returncode == 1 and "already running" in again.stderr
    assert mesh.cli("status").returncode == 0   # and the running mesh is untouched


def test_logs_show_a_components_json_log(mesh, users, alice):
    from aimesh.user.v1 import user_pb2
    from tests.integration.client import bearer
    for _ in range(10):     # its last five lines are of these calls, not the runner's line before them
        users.GetProfile(user_pb2.GetProfileRequest(), metadata=bearer(alice), timeout=5)
    logs = mesh.cli("logs", "user", "-n", "5")
    lines = [json.loads(line) for line in logs.stdout.splitlines()]
    assert lines and all(line["service"] == "user" and line["level"] for line in lines)


def test_services_export_metrics_per_method_and_log_calls_with_request_and_trace_ids(mesh, users, alice):
    from aimesh.user.v1 import user_pb2
    from tests.integration.client import bearer
    users.GetProfile(user_pb2.GetProfileRequest(), metadata=bearer(alice), timeout=5)
    user = mesh.topo.services["user"].instances[0]
    with urllib.request.urlopen(f"http://127.0.0.1:{user.metrics_port}/metrics",
                                timeout=5) as response:
        metrics = response.read().decode()
    assert ('aimesh_grpc_server_handled_total{code="OK",'
            'method="/aimesh.user.v1.UserService/GetProfile",service="user"}') in metrics
    assert "aimesh_grpc_server_handling_seconds_bucket" in metrics
    lines = [json.loads(line) for line in (mesh.state_dir / "logs" / "user.log").read_text().splitlines()
             if line.startswith("{")]
    calls = [line for line in lines if line.get("method") == "/aimesh.user.v1.UserService/GetProfile"]
    assert calls and all(len(c["request_id"]) >= 16 and len(c["trace_id"]) == 32 for c in calls)


@pytest.mark.parametrize("args, says", [
    (("stop", "nosuch"), "no component 'nosuch'; there are envoy"),
    (("start", "user"), "user is already running (`aimesh stop user` first)"),
    (("logs", "nosuch"), "no component 'nosuch'"),
    (("status", "--bogus"), "unrecognized arguments: --bogus"),
])
def test_a_users_mistake_is_one_line_not_a_traceback(mesh, args, says):
    called = mesh.cli(*args)
    assert called.returncode == 2
    assert "Traceback" not in called.stderr
    assert says in called.stderr.strip().splitlines()[-1]
