"""Envoy's side of workload identity: its certificate and the mesh's CA by file-based SDS."""
from __future__ import annotations

from dataclasses import dataclass

from services.kit.tls import dns_name, spiffe_id

from .common import OWN_CERTIFICATE, TRUST


@dataclass(frozen=True)
class CertFiles:
    """Where Envoy reads its certificate, key and the mesh's CA (a folder it watches: a renewal
    replaces files there), and where its two SDS files are."""
    folder: str
    certificate: str
    private_key: str
    trust: str
    sds_folder: str

    @classmethod
    def local(cls, folder: str = "certs") -> CertFiles:
        """The runner's: <state>/certs, the gateway's bundle (key and certificate in one file)."""
        return cls(folder, f"{OWN_CERTIFICATE}.pem", f"{OWN_CERTIFICATE}.pem", "ca.pem", folder)

    @classmethod
    def mounted(cls, folder: str, sds_folder: str) -> CertFiles:
        """A deployment's: a mounted Secret in cert-manager's layout."""
        return cls(folder, "tls.crt", "tls.key", "ca.crt", sds_folder)


class Tls:
    """Envoy's side of workload identity: its own certificate and the CA by file-based SDS (Envoy
    reloads them when a file in the watched certificates folder is replaced)."""

    def __init__(self, files: CertFiles):
        self.files = files

    def _sds(self, name: str) -> dict:
        return {"name": name, "sds_config": {"resource_api_version": "V3", "path_config_source": {
            "path": f"{self.files.sds_folder}/envoy-{name}.yaml",
            "watched_directory": {"path": self.files.folder}}}}

    def secrets(self) -> dict[str, dict]:
        """The SDS files: file name -> discovery response."""
        f = self.files
        own = {"name": OWN_CERTIFICATE, "tls_certificate": {
            "certificate_chain": {"filename": f"{f.folder}/{f.certificate}"},
            "private_key": {"filename": f"{f.folder}/{f.private_key}"}}}
        trust = {"name": TRUST, "validation_context": {
            "trusted_ca": {"filename": f"{f.folder}/{f.trust}"}}}
        secret = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
        return {f"envoy-{s['name']}.yaml": {"resources": [{"@type": secret, **s}]}
                for s in (own, trust)}

    def _common(self, alpn: list[str], peers: list[str] | None) -> dict:
        validation: dict = {}
        if peers:
            validation["match_typed_subject_alt_names"] = [
                {"san_type": "URI", "matcher": {"exact": spiffe_id(p)}} for p in peers]
        return {
            "tls_params": {"tls_minimum_protocol_version": "TLSv1_3",
                           "tls_maximum_protocol_version": "TLSv1_3"},
            "alpn_protocols": alpn,
            "tls_certificate_sds_secret_configs": [self._sds(OWN_CERTIFICATE)],
            "combined_validation_context": {
                "default_validation_context": validation,
                "validation_context_sds_secret_config": self._sds(TRUST)},
        }

    def downstream(self) -> dict:
        """The east-west listener: a client certificate of the mesh's CA is required."""
        return {"name": "envoy.transport_sockets.tls", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3"
                     ".DownstreamTlsContext",
            "require_client_certificate": True,
            "common_tls_context": self._common(["h2"], None)}}

    def upstream(self, workload: str, *, http2: bool = True) -> dict:
        """To a service: present the gateway's certificate, accept only `workload`'s."""
        return {"name": "envoy.transport_sockets.tls", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3"
                     ".UpstreamTlsContext",
            "sni": dns_name(workload),
            "common_tls_context": self._common(["h2"] if http2 else ["http/1.1"], [workload])}}


def sds_files(certs: CertFiles) -> dict[str, dict]:
    """The SDS files the rendered config reads (name in certs.sds_folder -> content)."""
    return Tls(certs).secrets()
