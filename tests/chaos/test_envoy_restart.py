"""Run last: Envoy, the one front door, restarts while clients call it. A patient client of an
idempotent call — wait-for-ready (gRPC holds a call until the gateway listens again) and gRPC's
own retry policy on UNAVAILABLE (a call in flight when the gateway went away) — never fails; a
call without either fails only UNAVAILABLE, only while the gateway is away; and the gateway
answers again within a bound."""
import json
import threading
import time

import grpc

from aimesh.user.v1 import user_pb2, user_pb2_grpc
from tests.integration.client import bearer, wait_for

RECOVERY_BOUND_S = 30
PATIENT = json.dumps({"methodConfig": [{
    "name": [{"service": "aimesh.user.v1.UserService", "method": "GetProfile"}], "waitForReady": True,
    "retryPolicy": {"maxAttempts": 5, "initialBackoff": "0.1s", "maxBackoff": "1s", "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"]}}]})


def test_clients_recover_when_the_gateway_restarts(mesh, alice):
    outcomes: dict[bool, list[grpc.StatusCode]] = {True: [], False: []}
    stop = threading.Event()

    def call(patient: bool) -> None:
        options = [("grpc.service_config", PATIENT)] if patient else [("grpc.enable_retries", 0)]
        with grpc.insecure_channel(mesh.gateway, options=options) as channel:
            stub = user_pb2_grpc.UserServiceStub(channel)
            while not stop.is_set():
                try:
                    stub.GetProfile(user_pb2.GetProfileRequest(), metadata=bearer(alice),
                                    timeout=RECOVERY_BOUND_S, wait_for_ready=patient)
                    outcomes[patient].append(grpc.StatusCode.OK)
                except grpc.RpcError as failed:
                    outcomes[patient].append(failed.code())
                time.sleep(0.05)

    callers = [threading.Thread(target=call, args=(patient,)) for patient in (True, False)]
    for caller in callers:
        caller.start()
    try:
        wait_for(lambda: len(outcomes[True]) >= 5 and len(outcomes[False]) >= 5, timeout_s=30,
                 what="calls before the restart")
        stopped = mesh.cli("stop", "envoy")
        assert stopped.returncode == 0, stopped.stderr
        down_at = time.monotonic()
        wait_for(lambda: grpc.StatusCode.UNAVAILABLE in outcomes[False], timeout_s=30,
                 what="a call refused while the gateway is away")
        started = mesh.cli("start", "envoy", timeout=120)
        assert started.returncode == 0, started.stderr
        before = len(outcomes[False])
        wait_for(lambda: grpc.StatusCode.OK in outcomes[False][before:], timeout_s=RECOVERY_BOUND_S,
                 what="the gateway answering again")
        print(f"\ngateway answered again {time.monotonic() - down_at:.1f} s after it was stopped")
        after = len(outcomes[True])
        wait_for(lambda: len(outcomes[True]) >= after + 5, timeout_s=30, what="calls after the restart")
    finally:
        stop.set()
        for caller in callers:
            caller.join(timeout=60)
    assert set(outcomes[True]) == {grpc.StatusCode.OK}, outcomes[True]
    assert set(outcomes[False]) <= {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}, outcomes[False]
