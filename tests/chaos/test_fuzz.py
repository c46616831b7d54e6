"""Hostile and plausible requests (bench/helpers/fuzz.py: generated from the contracts by
hypothesis, fixed seed) to every RPC's handlers, each service set up in this process on a test
database (bench/helpers/inprocess.py) and calling the mesh's models and services: each gets a clear
status, never INTERNAL or UNKNOWN, an INVALID_ARGUMENT always names its field, and no process of
the mesh dies or restarts. With the chaos tests, last: it leaves junk behind (test schemas in the
mesh's Postgres, the content it published in the mesh's search index).
A failing request is saved under tests/chaos/fuzz-examples and tried first from then on.
The long run: bin/aimesh bench fuzz."""
import pytest

from aimesh import topology
from bench.helpers import fuzz, inprocess

EXAMPLES = 50     # per RPC here; the long run's are thousands
RPCS = fuzz.rpcs(topology.load(port_offset=0))   # the contracts of the topology's services


@pytest.fixture(scope="module")
def pids_before(mesh):
    return mesh.pids()


@pytest.fixture(scope="module")
def run(mesh, pids_before):
    services = inprocess.Services(mesh, sorted({rpc.service for rpc in RPCS}))
    try:
        yield fuzz.Run(services)
    finally:
        services.close()


def test_every_rpc_of_the_contracts_is_fuzzed():
    assert len(RPCS) >= 18 and any(r.path.endswith("/Chat") for r in RPCS)


@pytest.mark.parametrize("rpc", RPCS, ids=[r.path for r in RPCS])
def test_generated_requests_get_a_clear_status(run, rpc):
    run.fuzz(rpc, EXAMPLES)
    # a request with no fields (GetProfile's) has one example only
    assert sum(n for (path, _), n in run.outcomes.items() if path == rpc.path) >= (
        EXAMPLES if rpc.request.fields else 1)


# Whose ids come from answers every run gets alike: CreateContent and ListContent answer the
# caller's own content (ids a Search or a job answers depend on what the suite indexed before).
NAMING_THE_CALLERS_CONTENT = [f"/aimesh.content.v1.ContentService/{method}"
                              for method in ("GetContent", "WatchContent", "CancelContent", "DeleteContent")]


def test_requests_naming_ids_reach_past_the_lookup(run):
    """Ids the mesh answered the run's caller with are named by later requests, so they get past
    the handlers' lookup (some answer other than NOT_FOUND or INVALID_ARGUMENT): random ids alone
    only ever found nothing. The caller's own account is found too."""
    for path in NAMING_THE_CALLERS_CONTENT:
        assert any(code not in ("NOT_FOUND", "INVALID_ARGUMENT")
                   for (called, code) in run.outcomes if called == path), fuzz.report(run.outcomes)
    assert run.outcomes["/aimesh.user.v1.UserService/GetProfile", "OK"] >= 1


def test_plausible_requests_get_past_validation(run):
    """Half the requests are what a client means, so an account is made, documents indexed and
    a search answered from generated fields, not only refused at validation."""
    for method in ("user.v1.UserService/Register", "search.v1.SearchService/IndexDocuments",
                   "search.v1.SearchService/Search"):
        assert run.outcomes[f"/aimesh.{method}", "OK"] > 0, fuzz.report(run.outcomes)


def test_the_services_logged_no_error(run):
    """Nor did their background work (a saga, a consumer) fail on what the requests made."""
    assert run.services.errors.records == []


def test_no_process_died_or_restarted_under_the_fuzzing(mesh, pids_before, run):
    print("\n" + fuzz.report(run.outcomes))
    assert mesh.pids() == pids_before
