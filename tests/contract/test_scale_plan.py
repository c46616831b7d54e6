"""The scale plan (docs/scale.md): the capacity model's sizing for 10x and 100x this machine's
capacity, as Kubernetes overlays that build and validate offline and say what the plan says."""
import json

import pytest

from bench import capacity_model
from tests.contract.test_deploy import K8S, _kustomize, needs_kubectl

PLAN = json.loads(capacity_model.PLAN.read_text())
COSTS = json.loads(capacity_model.COSTS.read_text())


def test_the_plan_is_made_from_the_costs_measured_last():
    assert PLAN["costs_measured"] == COSTS["measured"]
    assert set(PLAN["plans"]) == {"1x", "10x", "100x"}


@pytest.mark.parametrize("scale", ["1x", "10x", "100x"])
def test_every_planned_placement_holds_the_slos_in_the_model(scale):
    assert PLAN["plans"][scale]["slos_held"], PLAN["plans"][scale]["p99_ms"]


@needs_kubectl
@pytest.mark.parametrize("scale", ["10x", "100x"])
def test_the_overlay_builds_with_the_planned_replicas(scale):
    documents = _kustomize(K8S / "overlays" / f"scale-{scale}")
    planned = PLAN["plans"][scale]["k8s_replicas"]
    for name, count in planned.items():
        workload = next(d for d in documents if d["kind"] in ("Deployment", "StatefulSet")
                        and d["metadata"]["name"] == name)
        assert workload["spec"]["replicas"] == count, name
        autoscaler = next((d for d in documents if d["kind"] == "HorizontalPodAutoscaler"
                           and d["metadata"]["name"] == name), None)
        if autoscaler is not None:
            assert autoscaler["spec"]["minReplicas"] == count <= autoscaler["spec"]["maxReplicas"]
    postgres = next(d for d in documents if d["kind"] == "StatefulSet" and d["metadata"]["name"] == "postgres")
    requested = postgres["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"]
    assert requested == str(int(PLAN["plans"][scale]["postgres_cores"]))
