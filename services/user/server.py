"""UserService: accounts, login, profiles, purchases."""
from __future__ import annotations

import asyncio

import grpc
from google.protobuf import timestamp_pb2

from aimesh.events.v1 import events_pb2
from aimesh.user.v1 import user_pb2, user_pb2_grpc
from services import kit
from services.kit.outbox import Outbox

from .accounts import password_matches, register, registration
from .store import MIGRATIONS, Announce, Purchase, User, UserStore
from .tokens import FETCH_MARGIN_S, Issuer, KeyRing, KeyStore, KeyTimes, RotationPending, serve_jwks

TIERS = {"free": user_pb2.TIER_FREE, "pro": user_pb2.TIER_PRO}
ROLES = {"user": user_pb2.ROLE_USER, "admin": user_pb2.ROLE_ADMIN}


def profile(user: User) -> user_pb2.Profile:
    return user_pb2.Profile(user_id=user.id, email=user.email, display_name=user.display_name,
                            tier=TIERS[user.tier], role=ROLES[user.role],
                            create_time=kit.timestamp(user.created_at))


def signing_key(times: KeyTimes) -> user_pb2.SigningKey:
    key = user_pb2.SigningKey(kid=times.key.kid,
                              create_time=timestamp_pb2.Timestamp(seconds=int(times.key.created)),
                              sign_time=timestamp_pb2.Timestamp(seconds=int(times.signs)))
    if times.retires is not None:
        key.retire_time.seconds = int(times.retires)
    return key


def purchased(outbox: Outbox, *, imported: bool = False) -> Announce:
    """Announces a purchase as `user.purchased`, in the purchase's transaction."""
    async def announce(connection, purchase: Purchase) -> None:
        await outbox.add(connection, "user.purchased", events_pb2.UserPurchased(
            user_id=purchase.user_id, purchase_id=purchase.id, item_id=purchase.item_id,
            imported=imported))
    return announce


class UserServicer(user_pb2_grpc.UserServiceServicer):
    def __init__(self, users: UserStore, keys: KeyStore, issuer: Issuer, outbox: Outbox):
        self.users, self.keys, self.issuer, self.outbox = users, keys, issuer, outbox

    async def Register(self, request: user_pb2.RegisterRequest,
                      context: grpc.aio.ServicerContext) -> user_pb2.RegisterResponse:
        email, password, display_name = registration(request)

        async def registered(connection, user: User) -> None:
            await self.outbox.add(connection, "user.registered", events_pb2.UserRegistered(
                user_id=user.id, email=user.email, display_name=user.display_name))

        user = await register(self.users, email, password, display_name, announce=registered)
        return user_pb2.RegisterResponse(profile=profile(user))

    async def Login(self, request: user_pb2.LoginRequest,
                   context: grpc.aio.ServicerContext) -> user_pb2.LoginResponse:
        email = kit.validate.email(request)
        password = kit.validate.text(request, "password", max_len=256)
        user = await self.users.by_email(email)
        if user is None or not await password_matches(user, password):
            raise kit.Unauthenticated("wrong email or password")
        token, expires = self.issuer.issue(user.id, user.tier, user.role)
        return user_pb2.LoginResponse(access_token=token,
                                      expire_time=timestamp_pb2.Timestamp(seconds=expires),
                                      profile=profile(user))

    async def GetProfile(self, request: user_pb2.GetProfileRequest,
                        context: grpc.aio.ServicerContext) -> user_pb2.GetProfileResponse:
        return user_pb2.GetProfileResponse(profile=profile(await self._own(context)))

    async def UpdateProfile(self, request: user_pb2.UpdateProfileRequest,
                           context: grpc.aio.ServicerContext) -> user_pb2.UpdateProfileResponse:
        display_name = kit.validate.text(request, "display_name", max_len=80)
        user = await self.users.rename(kit.caller(context).user_id, display_name)
        if user is None:
            raise kit.NotFound("the caller's account no longer exists")
        return user_pb2.UpdateProfileResponse(profile=profile(user))

    async def RecordPurchase(self, request: user_pb2.RecordPurchaseRequest,
                            context: grpc.aio.ServicerContext) -> user_pb2.RecordPurchaseResponse:
        if request.item_id <= 0:
            raise kit.InvalidArgument("item_id", "must be a positive catalog item id")
        user = await self._own(context)
        purchase = await self.users.record_purchase(user.id, request.item_id, purchased(self.outbox))
        return user_pb2.RecordPurchaseResponse(purchase_id=purchase.id,
                                               purchase_time=kit.timestamp(purchase.created_at))

    async def SetAccess(self, request: user_pb2.SetAccessRequest,
                       context: grpc.aio.ServicerContext) -> user_pb2.SetAccessResponse:
        kit.admin(context)
        email = kit.validate.email(request)
        tier = kit.validate.choice(request, "tier", TIERS)
        role = kit.validate.choice(request, "role", ROLES)
        if tier is None and role is None:
            raise kit.InvalidArgument("tier", "give a tier or a role (or both)",
                                      ("role", "give a tier or a role (or both)"))
        user = await self.users.set_access(email, tier=tier, role=role)
        if user is None:
            raise kit.NotFound(f"no account with email {email}")
        return user_pb2.SetAccessResponse(profile=profile(user))

    async def RotateSigningKey(self, request: user_pb2.RotateSigningKeyRequest,
                              context: grpc.aio.ServicerContext) -> user_pb2.RotateSigningKeyResponse:
        kit.admin(context)
        try:
            await self.keys.rotate()
        except RotationPending as pending:
            raise kit.FailedPrecondition(f"a rotation is under way: {pending}") from None
        keys = [signing_key(k) for k in self.keys.ring.published()]
        return user_pb2.RotateSigningKeyResponse(key=keys[-1], keys=keys)   # the new key is the newest

    async def _own(self, context) -> User:
        user = await self.users.by_id(kit.caller(context).user_id)
        if user is None:
            raise kit.NotFound("the caller's account no longer exists")
        return user


async def setup(app: kit.App) -> list[kit.Binding]:
    config = app.config
    pool = await app.database(MIGRATIONS)
    users = UserStore(pool)
    ring = KeyRing(publish_s=config.jwks_cache_s + FETCH_MARGIN_S, token_ttl_s=config.token_ttl_s)
    keys = KeyStore(pool, ring)
    await keys.open()
    app.spawn(keys.run(app.stopping), name="signing-keys")
    jwks = serve_jwks(ring, config.host, config.jwks_port, app.server_tls())
    app.on_close(lambda: asyncio.to_thread(jwks.shutdown))
    outbox = app.outbox(pool, await app.events())
    if config.demo:
        from .demo import seed
        await seed(users, purchased(outbox, imported=True))
    issuer = Issuer(ring, config.issuer, config.audience, config.token_ttl_s)
    servicer = UserServicer(users, keys, issuer, outbox)
    return [kit.Binding(user_pb2_grpc.add_UserServiceServicer_to_server, servicer)]
