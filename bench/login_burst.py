"""What a burst of logins does to everyone else: GetProfile's latency through the gateway, one call
at a time, first alone and then while bursts of simultaneous Logins arrive (a password check is
argon2: ~150 ms of CPU spread over 4 threads, memory-hard by design). Also the Logins' own times.
On a machine whose cores every process shares, how many checks user-svc runs at once decides
whether a burst of them takes every core from every other request.

Prints figures and asserts none. Its own mesh with demo data (bench/topology.yaml, limits no run
reaches) in /tmp/aimesh-bench-login-state on AIMESH_PORT_OFFSET=2000; always brought down.

  bin/aimesh bench login_burst [--burst 12] [--every 2] [--seconds 30]
"""
from __future__ import annotations

import argparse
import collections
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
from helpers.common import fresh_mesh

from aimesh import demo
from aimesh.user.v1 import user_pb2, user_pb2_grpc

PASSWORD = "burst password"
TIMEOUT_S = 30


def probe(users: user_pb2_grpc.UserServiceStub, token: str, seconds: float) -> np.ndarray:
    """GetProfile, one call at a time, for `seconds`: each call's ms."""
    metadata, taken = [("authorization", f"Bearer {token}")], []
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        began = time.perf_counter()
        users.GetProfile(user_pb2.GetProfileRequest(), metadata=metadata, timeout=TIMEOUT_S)
        taken.append((time.perf_counter() - began) * 1000)
    return np.array(taken)


def bursts(users: user_pb2_grpc.UserServiceStub, emails: list[str], every_s: float, seconds: float,
           logins: list[float], failed: collections.Counter) -> None:
    """All of `emails` log in at once, every `every_s`, for `seconds`; each Login's ms into `logins`,
    or its status into `failed`."""
    def login(email: str) -> None:
        began = time.perf_counter()
        try:
            users.Login(user_pb2.LoginRequest(email=email, password=PASSWORD), timeout=TIMEOUT_S)
        except grpc.RpcError as error:
            failed[f"{error.code().name} ({error.details()})"] += 1
            return
        logins.append((time.perf_counter() - began) * 1000)

    with ThreadPoolExecutor(len(emails)) as pool:
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            next_burst = time.monotonic() + every_s
            list(pool.map(login, emails))
            time.sleep(max(0.0, next_burst - time.monotonic()))


def figures(name: str, ms: np.ndarray | list[float]) -> str:
    ms = np.asarray(ms)
    return (f"{name:<34} {len(ms):6d} calls  p50 {np.percentile(ms, 50):7.1f}  p99 {np.percentile(ms, 99):7.1f}"
            f"  max {ms.max():7.1f} ms")


def main() -> int:
    parser = argparse.ArgumentParser(prog="aimesh bench login_burst")
    parser.add_argument("--burst", type=int, default=12, help="Logins at once")
    parser.add_argument("--every", type=float, default=2.0, help="seconds from one burst's start to the next")
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args()
    with fresh_mesh("login_burst", "/tmp/aimesh-bench-login-state") as mesh:
        users = user_pb2_grpc.UserServiceStub(grpc.insecure_channel(mesh.gateway))
        emails = [f"burst-{i}@load.test" for i in range(args.burst)]
        for email in emails:
            users.Register(user_pb2.RegisterRequest(email=email, password=PASSWORD, display_name="burst"),
                           timeout=TIMEOUT_S)
        token = demo.login(mesh.gateway, emails[0], PASSWORD)
        probe(users, token, 5)    # warm
        alone = probe(users, token, args.seconds)
        logins: list[float] = []
        failed: collections.Counter = collections.Counter()
        burster = threading.Thread(target=bursts, args=(users, emails, args.every, args.seconds, logins, failed))
        burster.start()
        beside = probe(users, token, args.seconds)
        burster.join()
    print(f"\n{args.burst} Logins at once every {args.every:g} s, {args.seconds:g} s each row:")
    print(figures("GetProfile alone", alone))
    print(figures("GetProfile beside the bursts", beside))
    print(figures("Login, in the bursts", logins))
    print(f"Logins failed: {sum(failed.values())}" + "".join(f"; {n} {why}" for why, n in failed.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
