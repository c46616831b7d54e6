"""Typed configuration from the environment (AIMESH_<FIELD>), one object per process."""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Config:
    service: str = "unknown"          # e.g. "search"
    instance: str = ""                # e.g. "search-2"
    version: str = ""                 # e.g. "v2" for a canary instance
    host: str = "127.0.0.1"
    port: int = 0
    metrics_port: int = 0             # Prometheus /metrics; 0 = off
    probe_port: int = 0               # plaintext grpc.health.v1 only (probes that cannot do TLS); 0 = off
    certificate: str = ""             # this workload's certificate (kit.tls); "" = plaintext
    private_key: str = ""             # its key; "" = in the certificate's file (a bundle)
    trust_bundle: str = ""            # the mesh CA's certificate
    grace_s: float = 10.0             # SIGTERM: time to finish in-flight calls
    max_message_bytes: int = 4 << 20  # a larger request is RESOURCE_EXHAUSTED, before any handler
    postgres_dsn: str = ""
    nats_url: str = ""
    mesh_address: str = ""            # Envoy's east-west listener: every outbound call goes there
    triton_address: str = ""          # Triton gRPC (through the mesh once it routes Triton)
    model_versions: str = ""          # a file of model version swaps, read live (kit.inference); "" = none
    call_timeout_s: float = 5.0       # default deadline of an outbound call
    descriptor_set: str = ""          # the full descriptor set, for the catalog
    jwks_port: int = 0
    token_ttl_s: int = 3600
    jwks_cache_s: float = 300.0       # how long the gateway may cache the JWKS (key rotation waits it)
    audience: str = "aimesh"
    issuer: str = "aimesh-user"
    generations_per_user: int = 0     # chat: a user's answers generating at once (0: no cap)
    temperature: float = 0.7          # chat: sampling temperature of answers (0: greedy, repeatable)
    full_length: bool = False         # chat: answers run to max_tokens, not one paragraph (benchmarks)
    retention: str = ""               # the topology's retention block, as JSON (kit.retention)
    trace_sampling: float = 1.0       # share of the traces this process starts that are sampled
    ops_targets: str = ""             # ops: where the overview reads (services/ops/overview.Targets, JSON)
    agents: str = ""                  # method -> workloads calling it on a user's behalf (JSON; identity.on_behalf)
    saga: str = ""                    # content: the saga's timing (the topology's `saga`, JSON)
    crash_points: str = ""            # a file naming points where the process dies on purpose (chaos tests)
    log_level: str = "INFO"
    demo: bool = False                # seed demo data on start (the local runner sets it)

    @property
    def name(self) -> str:
        return self.instance or self.service

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Config:
        source: Mapping[str, str] = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            raw = source.get(f"AIMESH_{field.name.upper()}")
            if raw is not None:
                kind: Any = type(field.default)
                values[field.name] = raw.lower() in ("1", "true", "yes") if kind is bool else kind(raw)
        return cls(**values)

    def to_env(self) -> dict[str, str]:
        """The environment that makes `from_env` return this config (the runner uses it)."""
        return {f"AIMESH_{f.name.upper()}": str(getattr(self, f.name))
                for f in dataclasses.fields(self)}
