"""Signing keys, access tokens (ES256 JWT) and the JWKS the gateway verifies them with.

Keys live as PEM files in the service's state directory, named by key id. Tokens are signed
with the newest key; the JWKS publishes every key, so a new key can be added beside the old
one and the old one dropped once its last token has expired."""
from __future__ import annotations

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


@dataclass(frozen=True)
class SigningKey:
    kid: str
    private: ec.EllipticCurvePrivateKey


class KeyRing:
    def __init__(self, directory: Path):
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        if not list(directory.glob("*.pem")):
            self.add()

    def add(self) -> SigningKey:
        """A new signing key; it becomes the one tokens are signed with."""
        key = ec.generate_private_key(ec.SECP256R1())
        kid = time.strftime("%Y%m%d%H%M%S") + "-" + uuid.uuid4().hex[:8]
        path = self.directory / f"{kid}.pem"
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
        path.chmod(0o600)
        return SigningKey(kid, key)

    def keys(self) -> list[SigningKey]:
        """Oldest first (key ids start with their creation time)."""
        return [SigningKey(p.stem, serialization.load_pem_private_key(p.read_bytes(), None))
                for p in sorted(self.directory.glob("*.pem"))]

    def jwks(self) -> dict:
        entries = []
        for key in self.keys():
            jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.private.public_key()))
            entries.append({**jwk, "kid": key.kid, "alg": "ES256", "use": "sig"})
        return {"keys": entries}


@dataclass(frozen=True)
class Issuer:
    keys: KeyRing
    issuer: str
    audience: str
    ttl_s: int

    def issue(self, user_id: str, tier: str, role: str) -> tuple[str, int]:
        """A signed access token and its expiry (unix seconds)."""
        key = self.keys.keys()[-1]
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
