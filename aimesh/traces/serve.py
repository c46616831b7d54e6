"""Phoenix, in its own virtualenv, with its OTLP gRPC receiver on loopback. Run by that
environment's Python (it imports nothing of aimesh). Phoenix binds that receiver to every address
([::]) with no setting to change it, so this rewrites that one bind to 127.0.0.1 before serving;
its HTTP side (UI, OTLP over HTTP, REST API) follows PHOENIX_HOST."""
import sys

import grpc.aio._server as aio_server

_bind = aio_server.Server.add_insecure_port


def _on_loopback(self, address: str) -> int:
    return _bind(self, address.replace("[::]:", "127.0.0.1:"))


aio_server.Server.add_insecure_port = _on_loopback  # type: ignore[method-assign]

from phoenix.server.main import main  # noqa: E402  (after the bind is rewritten)

sys.argv = ["phoenix", "serve"]
main()
