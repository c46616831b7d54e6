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
from .identity import Agent, Caller, admin, caller, caller_or_agent
from .server import App, Binding, Server, serve
from .timestamps import timestamp

__all__ = [
    "DATABASE_UNREACHABLE", "Agent", "AlreadyExists", "App", "Binding", "Caller", "Config", "Error", "Events",
    "FailedPrecondition", "InvalidArgument", "NotFound", "PermissionDenied", "ResourceExhausted", "Server",
    "Unauthenticated", "Unavailable", "admin", "caller", "caller_or_agent", "field_violations", "serve", "timestamp",
    "unpack", "validate",
]
