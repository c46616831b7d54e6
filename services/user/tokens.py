"""Signing keys, access tokens (ES256 JWT) and the JWKS the gateway verifies them with.

Keys live as PEM files in the service's state directory, named by key id; a key id starts with
its creation time (UTC), so the files sort oldest first. Rotation without downtime:

1. `rotate` adds a key. The JWKS publishes it at once, but tokens are still signed with the
   previous key: the gateway caches the JWKS and would refuse a kid it has not fetched yet.
2. Once the gateway's cache time (plus time for a fetch) has passed, the new key signs.
3. The old key stays in the JWKS until its last token has expired (the token lifetime after the
   new key took over); then it leaves the JWKS, and its file is deleted by the next rotation."""
from __future__ import annotations

import calendar
import json
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

JWKS_PATH = "/.well-known/jwks.json"
KID_TIME = "%Y%m%d%H%M%S"
FETCH_MARGIN_S = 5.0   # beyond the gateway's cache time: one fetch, and one retry after a failure


@dataclass(frozen=True)
class SigningKey:
    kid: str
    private: ec.EllipticCurvePrivateKey

    @property
    def created(self) -> float:
        """Unix seconds, from the key id."""
        return float(calendar.timegm(time.strptime(self.kid.split("-")[0], KID_TIME)))


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
    def __init__(self, directory: Path, *, publish_s: float, token_ttl_s: float, clock=time.time):
        """publish_s: how long a new key is published before it signs (the gateway's JWKS cache
        time plus FETCH_MARGIN_S); token_ttl_s: the longest token lifetime."""
        self.directory, self.publish_s, self.token_ttl_s, self.clock = (
            directory, publish_s, token_ttl_s, clock)
        directory.mkdir(parents=True, exist_ok=True)
        if not list(directory.glob("*.pem")):
            self.add()

    def add(self) -> SigningKey:
        """A new key, published now; it signs once `publish_s` has passed (see `signing`)."""
        key = ec.generate_private_key(ec.SECP256R1())
        kid = time.strftime(KID_TIME, time.gmtime(self.clock())) + "-" + uuid.uuid4().hex[:8]
        path = self.directory / f"{kid}.pem"
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
        path.chmod(0o600)
        return SigningKey(kid, key)

    def keys(self) -> list[SigningKey]:
        """Every key on disk, oldest first."""
        return [SigningKey(p.stem, serialization.load_pem_private_key(p.read_bytes(), None))
                for p in sorted(self.directory.glob("*.pem"))]

    def schedule(self) -> list[KeyTimes]:
        """Each key on disk with when it signs and when it retires, oldest first. The oldest
        signs from its creation (the first key of a fresh service: no gateway has cached a JWKS
        yet); a later one `publish_s` after its creation. A key retires the token lifetime after
        the next one started signing."""
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
        """Delete the files of retired keys and add a new key (it signs after `publish_s`)."""
        now = self.clock()
        newest = self.schedule()[-1]
        if newest.signs > now:
            raise RotationPending(f"key {newest.key.kid} was added and signs from "
                                  f"{time.strftime('%H:%M:%S UTC', time.gmtime(newest.signs))}")
        for times in self.schedule():
            if times.retires is not None and times.retires <= now:
                (self.directory / f"{times.key.kid}.pem").unlink(missing_ok=True)
        return self.add()

    def jwks(self) -> dict:
        entries = []
        for times in self.published():
            jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(times.key.private.public_key()))
            entries.append({**jwk, "kid": times.key.kid, "alg": "ES256", "use": "sig"})
        return {"keys": entries}


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


def serve_jwks(keys: KeyRing, host: str, port: int) -> ThreadingHTTPServer:
    """Serve the JWKS over plain HTTP for the gateway's remote_jwks fetch."""

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
    threading.Thread(target=server.serve_forever, name="jwks", daemon=True).start()
    return server
