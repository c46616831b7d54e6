"""A trace backend that takes every export and keeps nothing: OTLP over gRPC (the services, Envoy)
and OTLP/HTTP (Triton) on the trace backend's ports, answered at once. It stands in for a backend
on another machine, so a benchmark can measure what tracing costs the mesh itself apart from what
ingesting the spans costs (bench/tracing_cost.py). Prints the spans it took when it ends.

  python -m helpers.otlp_sink GRPC_PORT HTTP_PORT
"""
from __future__ import annotations

import asyncio
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


class _Sink(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.spans = 0

    async def Export(self, request, context):  # noqa: N802 (the contract's name)
        self.spans += sum(len(scope.spans) for resource in request.resource_spans
                          for scope in resource.scope_spans)
        return trace_service_pb2.ExportTraceServiceResponse()


class _HttpSink(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


async def serve(grpc_port: int, http_port: int) -> None:
    http = ThreadingHTTPServer(("127.0.0.1", http_port), _HttpSink)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    sink = _Sink()
    server = grpc.aio.server()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(sink, server)
    server.add_insecure_port(f"127.0.0.1:{grpc_port}")
    await server.start()
    print("ready", flush=True)
    stopped = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopped.set)
    await stopped.wait()
    await server.stop(1)
    http.shutdown()
    print(f"took {sink.spans} spans over gRPC", flush=True)


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1]), int(sys.argv[2])))
