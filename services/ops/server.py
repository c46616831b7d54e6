"""OpsService: the mesh at a glance for admins (the page's Operations view), from the readings in
overview.py. Readings are shared: admins polling at once cause one reading a REUSE_S, not one each."""
from __future__ import annotations

import asyncio
import datetime
import time

import grpc

from aimesh.ops.v1 import ops_pb2, ops_pb2_grpc
from services import kit

from .overview import Overview, Targets, Watch

REUSE_S = 0.5


class OpsServicer(ops_pb2_grpc.OpsServiceServicer):
    def __init__(self, watch: Watch):
        self.watch, self.lock = watch, asyncio.Lock()
        self.last: tuple[float, Overview] | None = None

    async def GetOverview(self, request: ops_pb2.GetOverviewRequest,
                          context: grpc.aio.ServicerContext) -> ops_pb2.GetOverviewResponse:
        kit.admin(context)
        async with self.lock:
            if self.last is None or time.monotonic() - self.last[0] >= REUSE_S:
                self.last = (time.monotonic(), await asyncio.to_thread(self.watch.read))  # blocking HTTP reads
            return to_proto(self.last[1])


def to_proto(o: Overview) -> ops_pb2.GetOverviewResponse:
    def state(meets: bool | None) -> ops_pb2.SloState:
        return (ops_pb2.SLO_STATE_IDLE if meets is None
                else ops_pb2.SLO_STATE_MET if meets else ops_pb2.SLO_STATE_BREACHED)
    return ops_pb2.GetOverviewResponse(
        read_time=kit.timestamp(datetime.datetime.fromtimestamp(o.at, datetime.UTC)), window_seconds=o.window_s,
        routes=[ops_pb2.RouteStatus(
            route=r.route, calls_per_second=r.rps, p50_ms=r.p50_ms, p99_ms=r.p99_ms,
            error_share=r.error_share, fallback_share=r.fallback_share,
            slo_availability=r.slo_availability, slo_p99_ms=r.slo_p99_ms, slo_state=state(r.meets_slo))
            for r in o.routes],
        canary_splits=[ops_pb2.CanarySplit(service=s, weights=w) for s, w in o.weights.items()],
        faults=o.faults,
        breakers=[ops_pb2.BreakerStatus(location=where, name=what, state=s) for where, what, s in o.breakers],
        models=[ops_pb2.ModelStatus(model=m.model, versions=m.versions, requests_per_second=m.rps,
                                    average_batch=m.avg_batch, average_queue_ms=m.avg_queue_ms,
                                    pending=m.pending) for m in o.models],
        unreachable=o.unreachable)


async def setup(app: kit.App) -> list[kit.Binding]:
    watch = Watch(Targets.from_json(app.config.ops_targets))
    return [kit.Binding(ops_pb2_grpc.add_OpsServiceServicer_to_server, OpsServicer(watch))]
