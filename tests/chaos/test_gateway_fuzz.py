"""Hostile requests at the gateway's edge (bench/helpers/gateway_fuzz.py), per protocol: gRPC,
grpc-web and JSON, generated from the contracts and malformed by hand (garbage, cut frames, wrong
content types, bad JSON), to every RPC the gateway routes, with an admin's token: each gets a
clear answer (no HTTP 5xx, never INTERNAL or UNKNOWN, an INVALID_ARGUMENT names its field) and no
process dies or restarts. With the chaos tests, last: it leaves junk behind.
The long run: bin/aimesh bench fuzz --gateway."""
import collections

import pytest

from aimesh import topology
from bench.helpers import fuzz, gateway_fuzz

EXAMPLES = 2     # generated requests per RPC and protocol here; the long run's are hundreds
RPCS = fuzz.rpcs(topology.load(port_offset=0))
outcomes: collections.Counter = collections.Counter()


@pytest.fixture(scope="module")
def pids_before(mesh):
    return mesh.pids()


@pytest.fixture(scope="module")
def gateway(mesh, admin):
    sender = gateway_fuzz.Gateway(mesh.gateway, admin)
    yield sender
    sender.close()


@pytest.mark.parametrize("rpc", RPCS, ids=[r.path for r in RPCS])
def test_hostile_requests_at_the_gateway_get_a_clear_answer(mesh, pids_before, gateway, rpc):
    problems = gateway_fuzz.run_malformed(rpc, gateway, outcomes)
    problems += gateway_fuzz.run_generated(rpc, gateway, EXAMPLES, outcomes)
    assert not problems, "\n".join(problems)
    spoken = {protocol for path, protocol, _ in outcomes if path == rpc.path}
    assert spoken >= {"grpc", "grpc-web"} | ({"json"} if gateway_fuzz.http_rule(rpc) else set())


def test_no_process_died_or_restarted_under_the_gateway_fuzzing(mesh, pids_before):
    print("\n" + gateway_fuzz.report(outcomes) + "\n" + gateway_fuzz.summary(outcomes))
    assert mesh.pids() == pids_before
