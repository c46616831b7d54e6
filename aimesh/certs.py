"""The mesh's own certificate authority: issues each workload a short-lived certificate with its
SPIFFE id, and renews it well before it expires.

Files, in <state>/certs: ca.pem (the trust bundle every workload reads), ca.key, and one bundle per
workload, <workload>.pem (private key + certificate). Keys are 0600. A bundle is replaced by a
rename, so a reader sees the old pair or the new one, never half of each.

`python -m aimesh.certs renew <state> <lifetime_s> <workload>...` is the runner's renewer: a
supervised process that renews what is due and tells the processes that read certificates only at
start or on a signal (NATS) to reload."""
from __future__ import annotations

import datetime
import ipaddress
import os
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from services.kit.tls import dns_name, spiffe_id, split_bundle

CA_LIFETIME = datetime.timedelta(days=365)
RENEW_AT = 0.5               # renew a certificate once half its life has passed
CHECK_EVERY_S = 30.0         # how often the renewer looks
CLOCK_SKEW = datetime.timedelta(minutes=5)   # valid from a little before now
OPERATOR = "operator"        # the person at the CLI, grpcurl and the tests
NATS = "nats"                # the NATS server presents a certificate too


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _write(path: Path, data: bytes, mode: int = 0o600) -> None:
    partial = path.with_name(f".{path.name}.partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as file:
        file.write(data)
    os.chmod(partial, mode)
    os.replace(partial, path)


def _key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


@dataclass(frozen=True)
class Status:
    workload: str
    not_after: datetime.datetime
    lifetime: datetime.timedelta

    @property
    def remaining(self) -> datetime.timedelta:
        return self.not_after - _now()

    @property
    def due(self) -> bool:
        return self.remaining < self.lifetime * (1 - RENEW_AT)


class Authority:
    def __init__(self, state_dir: Path, *, folder: Path | None = None):
        """The CA of the state dir (<state>/certs), or the one whose ca.pem and ca.key are in
        `folder` (your own: docs/deploy.md)."""
        self.dir = Path(folder) if folder else Path(state_dir) / "certs"

    @property
    def trust_bundle(self) -> Path:
        return self.dir / "ca.pem"

    def bundle(self, workload: str) -> Path:
        return self.dir / f"{workload}.pem"

    # --- the CA ----------------------------------------------------------------------------

    def _ca(self):
        key_path = self.dir / "ca.key"
        if not key_path.exists():
            self.dir.mkdir(parents=True, exist_ok=True)
            os.chmod(self.dir, 0o700)
            key = ec.generate_private_key(ec.SECP256R1())
            name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "aimesh"),
                              x509.NameAttribute(NameOID.COMMON_NAME, "aimesh local CA")])
            cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                    .public_key(key.public_key()).serial_number(x509.random_serial_number())
                    .not_valid_before(_now() - CLOCK_SKEW).not_valid_after(_now() + CA_LIFETIME)
                    .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                    .add_extension(x509.KeyUsage(False, False, False, False, False, True, True,
                                                 False, False), critical=True)
                    .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                                   critical=False)
                    .sign(key, hashes.SHA256()))
            _write(key_path, _key_pem(key))
            _write(self.trust_bundle, cert.public_bytes(serialization.Encoding.PEM), 0o644)
        key = serialization.load_pem_private_key(key_path.read_bytes(), None)
        return key, x509.load_pem_x509_certificate(self.trust_bundle.read_bytes())

    # --- workloads -------------------------------------------------------------------------

    def issue(self, workload: str, lifetime: datetime.timedelta,
              not_before: datetime.datetime | None = None, ca=None, to: Path | None = None) -> Path:
        """A new key and certificate for `workload` (into its bundle, or `to`); usable as server
        and as client. The SANs are its SPIFFE id, <workload>.aimesh.local, and loopback."""
        ca_key, ca_cert = ca or self._ca()
        key = ec.generate_private_key(ec.SECP256R1())
        start = not_before or _now() - CLOCK_SKEW
        names = [x509.UniformResourceIdentifier(spiffe_id(workload)),
                 x509.DNSName(dns_name(workload)), x509.DNSName("localhost"),
                 x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "aimesh"),
                                         x509.NameAttribute(NameOID.COMMON_NAME, workload)]))
                .issuer_name(ca_cert.subject).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(start).not_valid_after(start + CLOCK_SKEW + lifetime)
                .add_extension(x509.SubjectAlternativeName(names), critical=False)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(True, False, True, False, False, False, False, False,
                                             False), critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                      ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                               critical=False)
                .sign(ca_key, hashes.SHA256()))
        path = to or self.bundle(workload)
        _write(path, _key_pem(key) + cert.public_bytes(serialization.Encoding.PEM))
        return path

    def export(self, workload: str, lifetime: datetime.timedelta, folder: Path) -> Path:
        """A new certificate for `workload` in cert-manager's layout (tls.crt, tls.key, ca.crt)
        in `folder`: what a deployment mounts (docker compose; Kubernetes without cert-manager)."""
        folder.mkdir(parents=True, exist_ok=True)
        os.chmod(folder, 0o755)       # the containers' users read it; the key file stays 0600
        bundle = self.issue(workload, lifetime, to=folder / ".bundle.pem")
        key, chain = split_bundle(bundle.read_bytes())
        _write(folder / "tls.key", key)
        _write(folder / "tls.crt", chain, 0o644)
        _write(folder / "ca.crt", self.trust_bundle.read_bytes(), 0o644)
        bundle.unlink()
        return folder

    def status(self, workload: str) -> Status | None:
        try:
            pem = self.bundle(workload).read_bytes()
        except FileNotFoundError:
            return None
        cert = x509.load_pem_x509_certificate(pem[pem.index(b"-----BEGIN CERTIFICATE"):])
        return Status(workload, cert.not_valid_after_utc,
                      cert.not_valid_after_utc - cert.not_valid_before_utc - CLOCK_SKEW)

    def ensure(self, workloads: list[str], lifetime_s: float, *, force: bool = False) -> list[str]:
        """Issue what is missing, due for renewal, or of another lifetime (all with `force`);
        return the workloads that got a new certificate."""
        lifetime = datetime.timedelta(seconds=lifetime_s)
        ca = self._ca()
        renewed = []
        for workload in workloads:
            status = self.status(workload)
            if force or status is None or status.due or status.lifetime != lifetime:
                self.issue(workload, lifetime, ca=ca)
                renewed.append(workload)
        return renewed


def tell_readers(state_dir: Path, renewed: list[str]) -> None:
    """Everything else reads a renewed file by itself (Envoy watches the folder, services check
    it); nats-server reloads its certificate on SIGHUP."""
    if NATS in renewed:
        try:
            os.kill(int((Path(state_dir) / "run" / f"{NATS}.pid").read_text()), signal.SIGHUP)
        except (OSError, ValueError) as error:   # not running: it reads the file when it starts
            print(f"nats not told to reload: {error}", flush=True)


def renew_forever(state_dir: Path, lifetime_s: float, workloads: list[str]) -> None:
    """The renewer's loop: until SIGTERM, renew what is due every CHECK_EVERY_S."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    authority = Authority(state_dir)
    while not stop.is_set():
        renewed = authority.ensure(workloads, lifetime_s)
        if renewed:
            print(f"renewed {', '.join(renewed)}", flush=True)
            tell_readers(state_dir, renewed)
        stop.wait(CHECK_EVERY_S)


if __name__ == "__main__":
    _, command, state, lifetime, *names = sys.argv
    assert command == "renew", "usage: python -m aimesh.certs renew STATE LIFETIME_S WORKLOAD..."
    renew_forever(Path(state), float(lifetime), names)
