"""The service kit: everything a service needs that is not its domain.

    from services import kit
    kit.serve(setup)                      # bootstrap, health, reflection, graceful stop
    who = kit.caller(context)             # identity from the gateway's headers
    limit = kit.validate.in_range(request, "limit", 1, 100, default=10)
    raise kit.NotFound("no such job")     # mapped to a gRPC status once, by the interceptor
"""
from . import validate
from .config import Config
from .database import UNREACHABLE as DATABASE_UNREACHABLE
from .errors import (
                     AlreadyExists,
                     Error,
                     FailedPrecondition,
                     InvalidArgument,
                     NotFound,
                     PermissionDenied,
                     ResourceExhausted,
                     Unauthenticated,
                     Unavailable,
                     field_violations,
)
from .events import Events, unpack
from .identity import PIN_HEADER, Agent, Caller, admin, caller, caller_or_agent, pinned_version
from .server import App, Binding, Server, serve
from .timestamps import timestamp

__all__ = [
    "DATABASE_UNREACHABLE", "PIN_HEADER", "Agent", "AlreadyExists", "App", "Binding", "Caller", "Config",
    "Error", "Events", "FailedPrecondition", "InvalidArgument", "NotFound", "PermissionDenied",
    "ResourceExhausted", "Server", "Unauthenticated", "Unavailable", "admin", "caller", "caller_or_agent",
    "field_violations", "pinned_version", "serve", "timestamp", "unpack", "validate",
]
