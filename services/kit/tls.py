"""Workload identity on the wire: this process's certificate, the mesh's CA, and who the peer is.

Every workload has one bundle file (its private key and certificate, PEM, mode 0600) issued by the
mesh's own CA with the URI SAN spiffe://aimesh.local/<workload>. The runner replaces the file (a
rename, so nobody reads half of it) well before the certificate expires; servers read it afresh
for each new connection and clients reconnect with it, so a renewal drops no call."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import ssl
from dataclasses import dataclass
from pathlib import Path

import grpc

from .errors import PermissionDenied, Unauthenticated

TRUST_DOMAIN = "aimesh.local"
GATEWAY = "gateway"             # Envoy: the only peer a service serves business calls to
SPIFFE_PROPERTY = "peer_spiffe_id"
HEALTH = "/grpc.health.v1.Health/"        # open on the plaintext probe port (Kubernetes' probes)
REFLECTION = "/grpc.reflection."          # open to any certificate of the mesh (operator's grpcurl)

log = logging.getLogger("aimesh.tls")


def spiffe_id(workload: str) -> str:
    return f"spiffe://{TRUST_DOMAIN}/{workload}"


def dns_name(workload: str) -> str:
    """The name a client checks the server's certificate against, wherever the server runs."""
    return f"{workload}.{TRUST_DOMAIN}"


PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z ]+)-----.+?-----END \1-----\n?", re.S)


def split_bundle(pem: bytes) -> tuple[bytes, bytes]:
    """(private key, certificate chain) from a bundle file holding both."""
    blocks = [(m[1], m[0]) for m in PEM_BLOCK.finditer(pem)]
    keys = [block for kind, block in blocks if kind.endswith(b"PRIVATE KEY")]
    chain = b"".join(block for kind, block in blocks if kind == b"CERTIFICATE")
    if len(keys) != 1 or not chain:
        raise ValueError("a bundle holds one private key and its certificate")
    return keys[0], chain


@dataclass(frozen=True)
class Identity:
    """Where this process's certificate, its key and the mesh's CA are (Config.certificate,
    private_key, trust_bundle). Locally the key is in the certificate's file (one bundle, replaced
    at once); in Kubernetes they are cert-manager's tls.crt and tls.key."""
    bundle: Path
    trust: Path
    key: Path | None = None

    @classmethod
    def of(cls, config) -> Identity | None:
        if not config.certificate:
            return None
        return cls(Path(config.certificate), Path(config.trust_bundle),
                   Path(config.private_key) if config.private_key else None)

    def _version(self) -> tuple[int, ...]:
        files = (self.bundle, self.trust, *([self.key] if self.key else []))
        return tuple(os.stat(path).st_mtime_ns for path in files)

    def read(self) -> tuple[bytes, bytes, bytes]:
        """(key, chain, CA certificates)."""
        if self.key is None:
            key, chain = split_bundle(self.bundle.read_bytes())
        else:
            key, chain = self.key.read_bytes(), self.bundle.read_bytes()
        return key, chain, self.trust.read_bytes()

    def _load(self, context: ssl.SSLContext) -> None:
        context.load_cert_chain(str(self.bundle), str(self.key) if self.key else None)

    # --- servers ---------------------------------------------------------------------------

    def server_credentials(self) -> grpc.ServerCredentials:
        """mTLS that asks every client for a certificate of the mesh's CA, and reloads this
        process's own certificate when its file changes (checked at each new connection)."""
        seen = self._version()

        def current():
            nonlocal seen
            try:
                version = self._version()
                if version == seen:
                    return None           # keep what the server has
                seen = version
                key, chain, ca = self.read()
            except (OSError, ValueError):
                log.exception("could not reload the certificate; keeping the one in use")
                return None
            log.info("certificate reloaded")
            return grpc.ssl_server_certificate_configuration([(key, chain)], root_certificates=ca)

        key, chain, ca = self.read()
        initial = grpc.ssl_server_certificate_configuration([(key, chain)], root_certificates=ca)
        return grpc.dynamic_ssl_server_credentials(initial, current,
                                                   require_client_authentication=True)

    # --- clients ---------------------------------------------------------------------------

    def channel_credentials(self) -> grpc.ChannelCredentials:
        key, chain, ca = self.read()
        return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key,
                                            certificate_chain=chain)

    def changed_since(self, version: tuple[int, ...]) -> bool:
        return self._version() != version

    def version(self) -> tuple[int, ...]:
        return self._version()

    def ssl_context(self) -> ssl.SSLContext:
        """A client context that presents this process's certificate and trusts only the CA
        (NATS); `keep_loaded` puts a renewed certificate into it for the next connection."""
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(self.trust))
        self._load(context)
        return context

    def server_ssl_context(self) -> ssl.SSLContext:
        """For a plain HTTP endpoint (the JWKS): this certificate, and a client certificate of
        the mesh's CA required."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_3
        self._load(context)
        context.load_verify_locations(cafile=str(self.trust))
        context.verify_mode = ssl.CERT_REQUIRED
        return context

    async def keep_loaded(self, context: ssl.SSLContext, stop: asyncio.Event,
                          every_s: float = 10.0) -> None:
        version = self.version()
        while not stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), every_s)
            if self.changed_since(version):
                version = self.version()
                self._load(context)
                log.info("certificate reloaded for new connections")


def peer(context: grpc.aio.ServicerContext) -> str | None:
    """The caller's workload identity (its SPIFFE id) from the verified TLS peer, or None on a
    plaintext connection (the probe port)."""
    ids = list((context.auth_context() or {}).get(SPIFFE_PROPERTY) or ())
    return ids[0].decode() if ids else None


def admit(method: str, context: grpc.aio.ServicerContext) -> None:
    """Who may call what on a service's own port: health anyone (the probe port is plaintext),
    reflection any workload of the mesh, everything else only the gateway, because only the
    gateway verified the user whose x-aimesh-* headers the handler believes."""
    if method.startswith(HEALTH):
        return
    who = peer(context)
    if who == spiffe_id(GATEWAY) or (who and method.startswith(REFLECTION)):
        return
    log.warning("refused a call not from the gateway",
                extra={"fields": {"peer": who or "no certificate", "address": context.peer(),
                                  "method": method}})
    if who is None:
        raise Unauthenticated("this port serves only grpc.health.v1 without a certificate")
    raise PermissionDenied(f"{who} may not call {method} directly: call through the gateway")
