"""`python -m services.kit.probe PORT`: exit 0 when the server on this host's PORT answers
grpc.health.v1 Check with SERVING, else 1. The container health check of every service image
(docker-compose.yml); Kubernetes calls the same health service with its native gRPC probe."""
from __future__ import annotations

import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def serving(target: str, service_name: str = "", timeout_s: float = 1.0) -> bool:
    """grpc.health.v1 Check of `service_name` ("": the whole server) says SERVING."""
    with grpc.insecure_channel(target) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service_name), timeout=timeout_s)
        except grpc.RpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


if __name__ == "__main__":
    sys.exit(0 if serving(f"127.0.0.1:{int(sys.argv[1])}") else 1)
