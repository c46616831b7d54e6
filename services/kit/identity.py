"""Who is calling: read only from the headers the gateway wrote after verifying the JWT."""
from __future__ import annotations

from dataclasses import dataclass

import grpc

from .errors import PermissionDenied, Unauthenticated
from .tls import spiffe_id

# The headers the gateway writes from a verified token (and strips from clients), by claim; the
# Envoy renderer and the kit both read them from here.
USER_ID_HEADER = "x-aimesh-user-id"
TIER_HEADER = "x-aimesh-tier"
ROLE_HEADER = "x-aimesh-role"
CLAIM_HEADERS = {"sub": USER_ID_HEADER, "tier": TIER_HEADER, "role": ROLE_HEADER}
JWKS_PATH = "/.well-known/jwks.json"     # where user-svc serves the keys the gateway verifies with
# A client's pin of one version of a canary service: the gateway routes a served version's pin to
# that version's instances, any other pin to the split like a call without one.
PIN_HEADER = "x-model-version"


@dataclass(frozen=True)
class Caller:
    user_id: str
    tier: str    # free | pro
    role: str    # user | admin

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


def _metadata(context: grpc.aio.ServicerContext) -> dict[str, str]:
    return {key: value for key, value in (context.invocation_metadata() or ())
            if isinstance(value, str)}


def caller(context: grpc.aio.ServicerContext) -> Caller:
    """The verified caller; UNAUTHENTICATED when the gateway wrote no identity."""
    headers = _metadata(context)
    user_id = headers.get(USER_ID_HEADER, "")
    if not user_id:
        raise Unauthenticated("no verified identity: call through the gateway with a token")
    return Caller(user_id=user_id, tier=headers.get(TIER_HEADER, "free"),
                  role=headers.get(ROLE_HEADER, "user"))


def pinned_version(context: grpc.aio.ServicerContext) -> str:
    """The version the caller pinned ("" for none)."""
    return _metadata(context).get(PIN_HEADER, "")


def admin(context: grpc.aio.ServicerContext) -> Caller:
    who = caller(context)
    if not who.is_admin:
        raise PermissionDenied("this call is for admins")
    return who


# The east-west listener writes the calling workload's certificate URI here (and the edge drops a
# client's copy), so behind the gateway it names the workload the gateway verified.
CLIENT_CERT_HEADER = "x-forwarded-client-cert"
SPIFFE_PREFIX = spiffe_id("")


def workload(context: grpc.aio.ServicerContext) -> str | None:
    """The workload (e.g. "content") whose certificate made this east-west call, or None."""
    details = _metadata(context).get(CLIENT_CERT_HEADER, "")
    # Hash=...;URI=spiffe://aimesh.local/content (one element: the gateway sets it afresh)
    for part in details.split(";"):
        key, _, value = part.partition("=")
        if key.strip().lower() == "uri" and value.strip('"').startswith(SPIFFE_PREFIX):
            return value.strip('"')[len(SPIFFE_PREFIX):]
    return None


@dataclass(frozen=True)
class Agent:
    """A workload calling on a user's behalf with no user token (identity.on_behalf)."""
    workload: str


def caller_or_agent(context: grpc.aio.ServicerContext, method: str,
                    agents: dict[str, list[str]]) -> Caller | Agent:
    """The verified user; else the calling workload, when `agents` (method -> workloads) lets it
    call `method` on a user's behalf; else UNAUTHENTICATED as for any call without a token."""
    if _metadata(context).get(USER_ID_HEADER):
        return caller(context)
    who = workload(context)
    if who is not None and who in agents.get(method, ()):
        return Agent(who)
    return caller(context)
