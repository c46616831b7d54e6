"""Run-time overrides (aimesh fault, aimesh canary): checked against the topology, kept in the
state dir, applied on top of the topology."""
from __future__ import annotations

import pytest

from aimesh import overrides, topology


@pytest.fixture(scope="module")
def topo() -> topology.Topology:
    return topology.load(topology.DEFAULT_FILE, port_offset=0)


@pytest.mark.parametrize(("target", "options", "says"), [
    ("nosuch", {"abort": "UNAVAILABLE"}, "no service 'nosuch'"),
    ("recommend", {}, "give --delay and/or --abort"),
    ("recommend", {"abort": "OK"}, "other than OK"),
    ("recommend", {"abort": "BROKEN"}, "gRPC status name"),
    ("recommend", {"abort": "UNAVAILABLE", "percent": 0}, "--percent"),
    ("recommend", {"abort": "UNAVAILABLE", "percent": 101}, "--percent"),
    ("recommend", {"abort": "UNAVAILABLE", "version": "v9"}, "no version 'v9' (its versions: v1, v2)"),
    ("user", {"abort": "UNAVAILABLE", "version": "v2"}, "user has no version 'v2'"),
    ("triton", {"abort": "UNAVAILABLE", "listener": "edge"}, "east-west only"),
    ("search", {"abort": "UNAVAILABLE", "caller": "nobody"}, "no caller 'nobody'"),
    ("search", {"abort": "UNAVAILABLE", "model": "recommender"}, "--model is for triton"),
    ("search", {"delay_s": -1}, "must not be negative"),
])
def test_a_bad_fault_is_refused_naming_what_is_wrong(topo, target, options, says):
    with pytest.raises(ValueError, match=says.replace("(", r"\(").replace(")", r"\)")):
        overrides.fault(topo, target, **options)


def test_triton_and_caller_faults_are_east_west(topo):
    assert overrides.fault(topo, "triton", abort="UNAVAILABLE").listener == "mesh"
    assert overrides.fault(topo, "search", abort="UNAVAILABLE", caller="chat").listener == "mesh"
    assert overrides.fault(topo, "search", abort="UNAVAILABLE").listener == ""


def test_overrides_survive_the_file_and_apply_on_top_of_the_topology(topo, tmp_path):
    assert overrides.load(tmp_path) == overrides.Overrides()
    fault = overrides.fault(topo, "recommend", delay_s=0.2, abort="UNAVAILABLE", percent=12.5, version="v2")
    saved = overrides.Overrides().with_fault(fault).with_weights("recommend", {"v1": 30, "v2": 70})
    overrides.save(tmp_path, saved)
    assert overrides.load(tmp_path) == saved
    applied = saved.on(topo)
    assert {i.version: i.weight for i in applied.services["recommend"].instances} == {"v1": 30, "v2": 70}
    assert applied.faults == (fault,)
    assert topo.faults == () and {i.weight for i in topo.services["recommend"].instances} == {90, 10}


def test_a_new_fault_replaces_its_targets_and_clear_removes_one_or_all(topo):
    first = overrides.fault(topo, "recommend", abort="UNAVAILABLE")
    second = overrides.fault(topo, "recommend", delay_s=1)
    other = overrides.fault(topo, "triton", abort="INTERNAL", model="recommender")
    both = overrides.Overrides().with_fault(first).with_fault(other).with_fault(second)
    assert both.faults == (other, second)
    assert both.without_faults("triton").faults == (second,)
    assert both.without_faults().faults == ()
    assert [line.split()[0] for line in both.lines()] == ["fault", "fault"]


@pytest.mark.parametrize(("percent", "expected"), [(10, {"v1": 90, "v2": 10}), (100, {"v1": 0, "v2": 100}),
                                                   (0, {"v1": 100, "v2": 0}), (33, {"v1": 67, "v2": 33})])
def test_canary_weights_add_up_to_100(topo, percent, expected):
    assert overrides.weights(topo, "recommend", "v2", percent) == expected
