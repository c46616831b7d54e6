"""Signing keys, access tokens (ES256 JWT) and the JWKS the gateway verifies them with.

Keys live in user-svc's Postgres (table signing_keys), so every instance signs with the same keys
and publishes the same JWKS; each instance keeps them in memory and reloads them every RELOAD_S.
A key id starts with its creation time (UTC), so ids sort oldest first, and every instance
derives the same schedule from them. Rotation without downtime:

1. `rotate` adds a key. The JWKS publishes it at once (every instance within RELOAD_S), but tokens
   are still signed with the previous key: the gateway caches the JWKS and would refuse a kid it
   has not fetched yet.
2. Once the gateway's cache time (plus time for a fetch and a reload) has passed, the new key signs.
3. The old key stays in the JWKS until its last token has expired (the token lifetime after the
   new key took over); then it leaves the JWKS, and its row is deleted by the next rotation."""
from __future__ import annotations

import asyncio
import calendar
import contextlib
import json
import logging
import ssl
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import asyncpg
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from services import kit
from services.kit.identity import JWKS_PATH

log = logging.getLogger("aimesh.keys")

KID_TIME = "%Y%m%d%H%M%S"
RELOAD_S = 1.0        # how soon another instance's rotation shows in this one's JWKS
# Beyond the gateway's cache time: a reload, one fetch, and one retry after a failure.
FETCH_MARGIN_S = 5.0 + RELOAD_S


@dataclass(frozen=True)
class SigningKey:
    kid: str
    private: ec.EllipticCurvePrivateKey

    @property
    def created(self) -> float:
        """Unix seconds, from the key id."""
        return float(calendar.timegm(time.strptime(self.kid.split("-")[0], KID_TIME)))

    def pem(self) -> bytes:
        return self.private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption())


@dataclass(frozen=True)
class KeyTimes:
    """A key's life: published at `created`, signs from `signs`, leaves the JWKS at `retires`
    (None while no newer key has taken over)."""
    key: SigningKey
    signs: float
    retires: float | None


class RotationPending(Exception):
    """A rotated key does not sign yet: rotating again would stack unpublished keys."""


class KeyRing:
    """The keys and their schedule, in memory (KeyStore keeps them in Postgres)."""

    def __init__(self, *, publish_s: float, token_ttl_s: float, clock=time.time):
        """publish_s: how long a new key is published before it signs (the gateway's JWKS cache
        time plus FETCH_MARGIN_S); token_ttl_s: the longest token lifetime."""
        self.publish_s, self.token_ttl_s, self.clock = publish_s, token_ttl_s, clock
        self._keys: tuple[SigningKey, ...] = ()   # replaced whole: the JWKS thread reads it

    def keys(self) -> list[SigningKey]:
        """Every key, oldest first."""
        return list(self._keys)

    def load(self, keys: list[SigningKey]) -> None:
        self._keys = tuple(sorted(keys, key=lambda k: k.kid))

    def add(self) -> SigningKey:
        """A new key, published now; it signs once `publish_s` has passed (see `signing`)."""
        kid = time.strftime(KID_TIME, time.gmtime(self.clock())) + "-" + uuid.uuid4().hex[:8]
        key = SigningKey(kid, ec.generate_private_key(ec.SECP256R1()))
        self.load([*self._keys, key])
        return key

    def schedule(self) -> list[KeyTimes]:
        """Each key with when it signs and when it retires, oldest first. The oldest signs from
        its creation (the first key of a fresh service: no gateway has cached a JWKS yet); a later
        one `publish_s` after its creation. A key retires the token lifetime after the next one
        started signing."""
        keys = self.keys()
        signs = [key.created + (self.publish_s if i else 0) for i, key in enumerate(keys)]
        return [KeyTimes(key, signs[i], signs[i + 1] + self.token_ttl_s if i + 1 < len(keys) else None)
                for i, key in enumerate(keys)]

    def published(self) -> list[KeyTimes]:
        """The keys in the JWKS: every key that has not retired."""
        now = self.clock()
        return [k for k in self.schedule() if k.retires is None or k.retires > now]

    def signing(self) -> SigningKey:
        """The newest key that signs by now."""
        now = self.clock()
        return [k for k in self.published() if k.signs <= now][-1].key

    def rotate(self) -> SigningKey:
        """Drop retired keys and add a new key (it signs after `publish_s`)."""
        now = self.clock()
        newest = self.schedule()[-1]
        if newest.signs > now:
            raise RotationPending(f"key {newest.key.kid} was added and signs from "
                                  f"{time.strftime('%H:%M:%S UTC', time.gmtime(newest.signs))}")
        self.load([t.key for t in self.schedule() if t.retires is None or t.retires > now])
        return self.add()

    def jwks(self) -> dict:
        entries = []
        for times in self.published():
            jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(times.key.private.public_key()))
            entries.append({**jwk, "kid": times.key.kid, "alg": "ES256", "use": "sig"})
        return {"keys": entries}


class KeyStore:
    """The ring's keys in Postgres. Changes (the first key, a rotation) are made under a lock, on
    the keys as stored, so instances starting or rotating together agree."""

    def __init__(self, pool: asyncpg.Pool, ring: KeyRing):
        self.pool, self.ring = pool, ring
        self._lock = asyncio.Lock()   # a reload never lands in the middle of this instance's change

    async def _stored(self, connection) -> list[SigningKey]:
        return [SigningKey(r["kid"], _ec_key(r["private_pem"]))
                for r in await connection.fetch("SELECT kid, private_pem FROM signing_keys")]

    async def reload(self) -> None:
        async with self._lock, self.pool.acquire() as connection:
            self.ring.load(await self._stored(connection))

    @contextlib.asynccontextmanager
    async def _change(self):
        """The ring as stored, to change; what it holds after is stored in the same transaction.
        If anything fails before the commit, the ring goes back to the keys as stored."""
        async with self._lock, self.pool.acquire() as connection:
            before = None
            try:
                async with connection.transaction():
                    await connection.execute("SELECT pg_advisory_xact_lock(hashtext('signing_keys'))")
                    before = await self._stored(connection)
                    self.ring.load(before)
                    yield self.ring
                    after = {k.kid: k for k in self.ring.keys()}
                    await connection.execute(
                        "DELETE FROM signing_keys WHERE NOT (kid = ANY($1::text[]))", list(after))
                    await connection.executemany(
                        "INSERT INTO signing_keys (kid, private_pem) VALUES ($1, $2) "
                        "ON CONFLICT (kid) DO NOTHING", [(k.kid, k.pem()) for k in after.values()])
            except BaseException:
                if before is not None:
                    self.ring.load(before)
                raise

    async def open(self) -> None:
        """Load the keys; the first instance of a fresh service makes the first key."""
        async with self._change() as ring:
            if not ring.keys():
                ring.add()

    async def rotate(self) -> SigningKey:
        async with self._change() as ring:
            return ring.rotate()

    async def run(self, stop: asyncio.Event) -> None:
        """Reload every RELOAD_S until `stop`: a rotation made by another instance shows here."""
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), RELOAD_S)
            if stop.is_set():
                return
            try:
                await self.reload()
            except (OSError, asyncpg.PostgresError, *kit.DATABASE_UNREACHABLE) as failure:
                # Postgres away for a moment: sign with the keys already loaded.
                log.warning("reloading the signing keys failed; will retry: %s", failure)


@dataclass(frozen=True)
class Issuer:
    keys: KeyRing
    issuer: str
    audience: str
    ttl_s: int

    def issue(self, user_id: str, tier: str, role: str) -> tuple[str, int]:
        """A signed access token and its expiry (unix seconds)."""
        key = self.keys.signing()
        now = int(time.time())
        expires = now + self.ttl_s
        claims = {"sub": user_id, "tier": tier, "role": role, "iss": self.issuer,
                  "aud": self.audience, "iat": now, "exp": expires}
        return jwt.encode(claims, key.private, algorithm="ES256", headers={"kid": key.kid}), expires


def serve_jwks(keys: KeyRing, host: str, port: int,
               tls: ssl.SSLContext | None = None) -> ThreadingHTTPServer:
    """Serve the JWKS for the gateway's remote_jwks fetch: over TLS with a context (the
    handshake runs in the request's thread, so a slow client holds up no one else)."""

    class JwksHandler(BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path != JWKS_PATH:
                self.send_error(404)
                return
            body = json.dumps(keys.jwks()).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):   # the gateway fetches it every few minutes: no noise
            pass

    server = ThreadingHTTPServer((host, port), JwksHandler)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True,
                                        do_handshake_on_connect=False)
    threading.Thread(target=server.serve_forever, name="jwks", daemon=True).start()
    return server


def _ec_key(pem: bytes) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(pem, None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError("a signing key that is not an EC key")
    return key
