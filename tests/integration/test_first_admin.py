"""The first admin of a mesh without one (`aimesh user first-admin`): made in user-svc's store
(the mesh's real Postgres, on a schema of the test's own) only while there is no admin, checked
as Register checks; on the test mesh, which has the demo admin, the command refuses."""
import uuid

import pytest

from aimesh.user.v1 import user_pb2
from services import kit
from services.kit import database
from services.user.accounts import password_matches
from services.user.first_admin import make_first_admin
from services.user.store import MIGRATIONS, UserStore


@pytest.fixture
async def users(mesh):
    schema = f"first_admin_test_{uuid.uuid4().hex[:8]}"
    pool = await database.connect(mesh.postgres_dsn(), schema, MIGRATIONS)
    yield UserStore(pool)
    await pool.execute(f'DROP SCHEMA "{schema}" CASCADE')
    await pool.close()


def asked(email: str, password: str = "long enough", name: str = "Boss") -> user_pb2.RegisterRequest:
    return user_pb2.RegisterRequest(email=email, password=password, display_name=name)


async def test_the_first_admin_is_made_once(users):
    admin, created = await make_first_admin(users, asked("Boss@Example.com"))
    assert created and admin.role == "admin" and admin.email == "boss@example.com"
    assert await password_matches(admin, "long enough")
    with pytest.raises(kit.FailedPrecondition, match="boss@example.com is an admin already"):
        await make_first_admin(users, asked("second@example.com"))
    assert await users.by_email("second@example.com") is None


async def test_an_existing_account_is_made_admin_and_keeps_its_password(users):
    from services.user.accounts import register
    await register(users, "ops@example.com", "the old password", "Ops")
    admin, created = await make_first_admin(users, asked("ops@example.com", password=""))
    assert not created and admin.role == "admin"
    assert await password_matches(admin, "the old password")


@pytest.mark.parametrize("request_, field", [
    (asked("not an address"), "email"), (asked("new@example.com", password="short"), "password")])
async def test_a_bad_request_is_refused_naming_the_field(users, request_, field):
    with pytest.raises(kit.InvalidArgument) as refused:
        await make_first_admin(users, request_)
    assert refused.value.violations[0][0] == field
    assert await users.an_admin() is None


def test_the_cli_refuses_where_there_is_an_admin(mesh):
    run = mesh.cli("user", "first-admin", f"late-{uuid.uuid4().hex[:8]}@example.com", timeout=60)
    assert run.returncode == 1 and "FAILED_PRECONDITION" in run.stderr and "is an admin already" in run.stderr
