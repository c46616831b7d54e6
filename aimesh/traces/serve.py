"""Phoenix, in its own virtualenv, with its OTLP gRPC receiver on loopback, and a receiver of OTLP
over HTTP as JSON for Triton. Run by that environment's Python (it imports nothing of aimesh).

- Phoenix binds its gRPC receiver to every address ([::]) with no setting to change it, so this
  rewrites that one bind to 127.0.0.1 before serving; its HTTP side (UI, OTLP over HTTP, REST API)
  follows PHOENIX_HOST.
- Triton's OpenTelemetry exporter (opentelemetry-cpp 1.8) sends OTLP/HTTP as JSON only, which
  Phoenix refuses (415). On PHOENIX_OTLP_JSON_PORT this takes that JSON, reads it into the OTLP
  protobuf message (the JSON is that message's JSON form, ids in hex as OTLP's JSON encoding says,
  where protobuf's JSON has base64) and hands it to Phoenix's own OTLP/HTTP endpoint."""
import base64
import json
import os
import sys
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc.aio._server as aio_server
from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

_bind = aio_server.Server.add_insecure_port


def _on_loopback(self, address: str) -> int:
    return _bind(self, address.replace("[::]:", "127.0.0.1:"))


aio_server.Server.add_insecure_port = _on_loopback  # type: ignore[method-assign]

HEX_IDS = {"traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id"}


def _ids_to_base64(node):
    if isinstance(node, dict):
        return {key: base64.b64encode(bytes.fromhex(value)).decode()
                if key in HEX_IDS and isinstance(value, str) else _ids_to_base64(value)
                for key, value in node.items()}
    if isinstance(node, list):
        return [_ids_to_base64(item) for item in node]
    return node


def otlp_protobuf(body: bytes) -> bytes:
    """OTLP/JSON (hex ids) → the same export request as OTLP/protobuf."""
    request = json_format.ParseDict(_ids_to_base64(json.loads(body)), ExportTraceServiceRequest(),
                                    ignore_unknown_fields=True)
    return request.SerializeToString()


class _JsonReceiver(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        try:
            translated = otlp_protobuf(body)
        except (ValueError, json_format.ParseError) as error:
            self._answer(400, f"not OTLP/JSON: {error}")
            return
        forward = urllib.request.Request(
            f"http://127.0.0.1:{os.environ['PHOENIX_PORT']}/v1/traces", data=translated,
            headers={"Content-Type": "application/x-protobuf"})
        try:
            with urllib.request.urlopen(forward, timeout=10) as answer:
                self._answer(answer.status, "")
        except OSError as error:       # Phoenix not ready or refusing: the exporter may retry
            self._answer(503, str(error))

    def _answer(self, status: int, text: str) -> None:
        if status >= 300:
            print(f"otlp-json: answered {status}: {text}", file=sys.stderr, flush=True)
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(text.encode())))
        self.end_headers()
        self.wfile.write(text.encode())

    def log_message(self, *args) -> None:   # one line per export would drown Phoenix's log (failures: above)
        pass


def _receive_json(port: int) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", port), _JsonReceiver)
    threading.Thread(target=server.serve_forever, name="otlp-json", daemon=True).start()


if __name__ == "__main__":
    from phoenix.server.main import main  # after the bind is rewritten

    if port := int(os.environ.get("PHOENIX_OTLP_JSON_PORT", "0")):
        _receive_json(port)
    sys.argv = ["phoenix", "serve"]
    main()
