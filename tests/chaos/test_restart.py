"""Run last: the whole mesh goes down and comes back; what was committed is still there."""
import uuid

from aimesh import demo
from aimesh.notify.v1 import notify_pb2, notify_pb2_grpc
from aimesh.user.v1 import user_pb2
from tests.integration.client import bearer, register, wait_for


def test_state_survives_down_and_up(mesh, users):
    email = f"durable-{uuid.uuid4().hex[:8]}@example.com"
    user_id = register(users, email).profile.user_id
    token = users.Login(user_pb2.LoginRequest(email=email, password="correct horse battery"),
                        timeout=5).access_token
    with mesh.channel() as channel:
        inbox = notify_pb2_grpc.NotificationServiceStub(channel)
        wait_for(lambda: inbox.ListNotifications(notify_pb2.ListNotificationsRequest(),
                                                 metadata=bearer(token), timeout=5).notifications,
                 timeout_s=30, what="the welcome notification")   # right after the Postgres crash test

    assert mesh.cli("down").returncode == 0
    up = mesh.cli("up")
    assert up.returncode == 0, up.stderr
    assert "indexed" not in up.stdout   # the catalog is indexed once, not on every up

    login = users.Login(user_pb2.LoginRequest(email=email, password="correct horse battery"), timeout=5)
    assert login.profile.user_id == user_id
    with mesh.channel() as channel:
        inbox = notify_pb2_grpc.NotificationServiceStub(channel)
        kept = inbox.ListNotifications(notify_pb2.ListNotificationsRequest(),
                                       metadata=bearer(login.access_token), timeout=5).notifications
    assert [n.kind for n in kept] == ["user.registered"]   # kept, and not duplicated on restart
    assert demo.login(mesh.gateway, "alice@demo.aimesh")
