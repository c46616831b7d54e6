"""Admin commands, made through the gateway as an admin account (as any client would): create
users, set their tier and role, rotate user-svc's signing key. The first admin, which no admin can
make yet, the operator writes in user-svc's database."""
from __future__ import annotations

import secrets
import sys
import time
from dataclasses import dataclass

import grpc

from aimesh.user.v1 import user_pb2, user_pb2_grpc

from . import demo, topology

TIMEOUT_S = 10


@dataclass(frozen=True)
class Admin:
    gateway: str
    email: str = "admin@demo.aimesh"
    password: str = demo.PASSWORD

    def call(self, method: str, request):
        """Log in as the admin, then call UserService.<method> with the admin's token."""
        with grpc.insecure_channel(self.gateway) as channel:
            users = user_pb2_grpc.UserServiceStub(channel)
            token = users.Login(user_pb2.LoginRequest(email=self.email, password=self.password),
                                timeout=TIMEOUT_S).access_token
            return getattr(users, method)(request, timeout=TIMEOUT_S,
                                          metadata=[("authorization", f"Bearer {token}")])


def create_user(admin: Admin, email: str, *, password: str | None, name: str | None,
                tier: str, role: str) -> tuple[user_pb2.Profile, str]:
    """Register the account, then give it its tier and role; returns its profile and password
    (a random one when none is given)."""
    password = password or secrets.token_urlsafe(12)
    admin.call("GetProfile", user_pb2.GetProfileRequest())   # bad admin credentials: stop here
    with grpc.insecure_channel(admin.gateway) as channel:
        user_pb2_grpc.UserServiceStub(channel).Register(user_pb2.RegisterRequest(
            email=email, password=password, display_name=name or email.split("@")[0]),
            timeout=TIMEOUT_S)
    return set_access(admin, email, tier=tier, role=role), password


def set_access(admin: Admin, email: str, *, tier: str | None, role: str | None) -> user_pb2.Profile:
    return admin.call("SetAccess", user_pb2.SetAccessRequest(
        email=email,   # unset: unchanged (the enums' zero value)
        tier=f"TIER_{tier.upper()}" if tier else "TIER_UNSPECIFIED",
        role=f"ROLE_{role.upper()}" if role else "ROLE_UNSPECIFIED")).profile


def describe(profile: user_pb2.Profile) -> str:
    return (f"{profile.email}  id {profile.user_id}  tier {user_pb2.Tier.Name(profile.tier)}"
            f"  role {user_pb2.Role.Name(profile.role)}")


def rotate_key(admin: Admin) -> list[str]:
    """Rotate the signing key; lines that say when each key signs and retires."""
    reply = admin.call("RotateSigningKey", user_pb2.RotateSigningKeyRequest())

    def when(stamp) -> str:
        return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(stamp.seconds))

    lines = [f"added key {reply.key.kid}; it signs tokens from {when(reply.key.sign_time)}"]
    for key in reply.keys:
        retires = f", leaves the JWKS {when(key.retire_time)}" if key.HasField("retire_time") else ""
        lines.append(f"  {key.kid}: signs from {when(key.sign_time)}{retires}")
    return lines


# --- the CLI's admin commands (aimesh user ..., aimesh keys rotate) ----------------------------

def _as_admin(args, work) -> int:
    """Print the lines of work(admin account), whose calls go through the gateway (a refused call:
    its status, printed by the CLI)."""
    gateway = f"127.0.0.1:{topology.load().gateway.edge_port}"
    print("\n".join(work(Admin(gateway, args.admin, args.admin_password))))
    return 0


def cmd_user_create(args) -> int:

    def create(account):
        profile, password = create_user(account, args.email, password=args.password,
                                              name=args.name, tier=args.tier, role=args.role)
        return [describe(profile)] + ([] if args.password else [f"  password: {password}"])
    return _as_admin(args, create)


def cmd_user_set(args) -> int:
    if not (args.tier or args.role):
        print("aimesh: give --tier or --role", file=sys.stderr)
        return 2
    return _as_admin(args, lambda account: [
        describe(set_access(account, args.email, tier=args.tier, role=args.role)),
        "  (the user's next token carries it; a token issued before keeps the old claims until it expires)"])


def cmd_user_first_admin(args) -> int:
    """The first admin, written by the operator in user-svc's database (no admin to ask yet)."""
    import asyncio

    from services import kit
    from services.kit import database
    from services.user.first_admin import make_first_admin
    from services.user.store import MIGRATIONS, UserStore

    from . import paths
    from .infra import postgres_dsn
    password = args.password or secrets.token_urlsafe(12)
    request = user_pb2.RegisterRequest(email=args.email, password=password,
                                       display_name=args.name or args.email.split("@")[0])

    async def make():
        dsn = postgres_dsn(topology.load().infra, paths.state_dir(), "user")
        pool = await database.connect(dsn, "user", MIGRATIONS)
        try:
            return await make_first_admin(UserStore(pool), request)
        finally:
            await pool.close()
    try:
        user, created = asyncio.run(make())
    except kit.Error as refused:
        print(f"aimesh: {refused.code.name}: {refused.message}", file=sys.stderr)
        return 1
    print(f"{user.email}  id {user.id}  role admin: " + ("created" if created else "was a user"))
    if created and not args.password:
        print(f"  password: {password}")
    return 0


def cmd_keys_rotate(args) -> int:
    return _as_admin(args, rotate_key)
