"""Hostile requests (bench/helpers/fuzz.py: generated from the contracts by hypothesis, fixed
seed) to every RPC on each service's own port, as the gateway sends them: each gets a clear
status, never INTERNAL or UNKNOWN, an INVALID_ARGUMENT always names its field, and no process
dies or restarts. With the chaos tests, last: it leaves junk (accounts, documents, jobs) behind.
A failing request is saved under tests/chaos/fuzz-examples and tried first from then on.
The long run: bin/aimesh bench fuzz."""
import collections

import pytest

from aimesh import topology
from bench.helpers import fuzz

EXAMPLES = 25     # per RPC here; the long run's are thousands
RPCS = fuzz.rpcs(topology.load(port_offset=0))   # the contracts of the topology's services
outcomes: collections.Counter = collections.Counter()


@pytest.fixture(scope="module")
def pids_before(mesh):
    return mesh.pids()


def test_every_rpc_of_the_contracts_is_fuzzed():
    assert len(RPCS) >= 18 and any(r.path.endswith("/Chat") for r in RPCS)


@pytest.mark.parametrize("rpc", RPCS, ids=[r.path for r in RPCS])
def test_hostile_requests_get_a_clear_status(mesh, pids_before, rpc):
    instance = fuzz.instance_of(mesh.topo, rpc.service)
    with mesh.direct(instance, rpc.service) as channel:
        fuzz.fuzz(rpc, channel, EXAMPLES, outcomes)
    # a request with no fields (GetProfile's) has one example only
    assert sum(n for (path, _), n in outcomes.items() if path == rpc.path) >= (
        EXAMPLES if rpc.request.fields else 1)


def test_no_process_died_or_restarted_under_the_fuzzing(mesh, pids_before):
    print("\n" + fuzz.report(outcomes))
    assert mesh.pids() == pids_before
