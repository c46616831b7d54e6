"""The first admin of a mesh that has none (one started without demo data): SetAccess needs an
admin's token, so the operator makes the first one in user-svc's database (`aimesh user
first-admin`). Once there is an admin, admins make the rest through the gateway."""
from __future__ import annotations

from aimesh.user.v1 import user_pb2
from services import kit

from .accounts import register, registration
from .store import User, UserStore


async def make_first_admin(users: UserStore, request: user_pb2.RegisterRequest) -> tuple[User, bool]:
    """The account `request` names, made an admin: created as Register would (checked the same
    way) when there is none, else its role set. Returns it and whether it was created.
    FAILED_PRECONDITION when the mesh has an admin already."""
    email = kit.validate.email(request)
    if (admin := await users.an_admin()) is not None:
        raise kit.FailedPrecondition(f"{admin.email} is an admin already: admins set roles (aimesh user set)")
    if (existing := await users.set_access(email, tier=None, role="admin")) is not None:
        return existing, False
    email, password, display_name = registration(request)
    return await register(users, email, password, display_name, role="admin"), True
