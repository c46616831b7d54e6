"""docker-compose.yml and deploy/k8s: current with the topology, valid by their own schemas, and
in step with the topology (images, ports, routes, weights). Validated offline only: no Docker
engine or cluster runs here. After an intended change: `bin/aimesh deploy render`."""
from __future__ import annotations

import dataclasses
import datetime
import json
import os
import re
import shutil
import subprocess
from importlib import resources
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from aimesh import certs, deploy, envoy, paths, topology
from services.kit.tls import GATEWAY, spiffe_id

ROOT = paths.ROOT
K8S = ROOT / "deploy" / "k8s"
KUBERNETES_VERSION = "1.32.0"       # the oldest release the manifests must be valid for
KUBECTL = shutil.which("kubectl")
CERT_MANAGER = "cert-manager.io/"
needs_kubectl = pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed: "
                                   "`kubectl kustomize` cannot build the overlays here")


@pytest.fixture(scope="module")
def topo() -> topology.Topology:
    return topology.load(topology.DEFAULT_FILE, port_offset=0)


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _documents(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


@pytest.fixture(scope="module")
def manifests() -> list[dict]:
    return [d for name in ("namespace", "infra", "gateway", "services")
            for d in _documents(K8S / "base" / f"{name}.yaml")]


def _find(documents: list[dict], kind: str, name: str) -> dict:
    found = [d for d in documents if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind} {name}: {len(found)} found"
    return found[0]


# --- current and valid -----------------------------------------------------------------------

def test_generated_files_are_current():
    assert deploy.stale() == [], "run `bin/aimesh deploy render` and commit the result"


def test_stale_notices_a_hand_edit(tmp_path):
    for relative, content in deploy.render().items():
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text(content)
    assert deploy.stale(tmp_path) == []
    edited = tmp_path / "docker-compose.yml"
    edited.write_text(edited.read_text().replace("7062", "7099"))
    assert deploy.stale(tmp_path) == ["docker-compose.yml"]


def test_compose_file_matches_the_compose_spec(compose):
    # The schema check-jsonschema ships (--builtin-schema vendor.compose-spec), read from the
    # package in-process: nothing is downloaded.
    schema = json.loads(resources.files("check_jsonschema.builtin_schemas.vendor")
                        .joinpath("compose-spec.json").read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
              for e in validator.iter_errors(compose)]
    assert errors == []


def test_compose_spec_check_can_fail():
    schema = json.loads(resources.files("check_jsonschema.builtin_schemas.vendor")
                        .joinpath("compose-spec.json").read_text())
    broken = {"services": {"envoy": {"image": "x", "depends_on": {"user": {"condition": "up"}}}}}
    assert list(jsonschema.validators.validator_for(schema)(schema).iter_errors(broken))


def test_manifests_validate_against_the_kubernetes_schemas(manifests):
    for document in manifests:
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def test_kubernetes_validation_can_fail(manifests):
    deployment = _find(manifests, "Deployment", "search")
    broken = json.loads(json.dumps(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpc"]["port"] = "grpc"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def _kustomize(directory: Path) -> list[dict]:
    result = subprocess.run([KUBECTL, "kustomize", str(directory)], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    documents = [d for d in yaml.safe_load_all(result.stdout) if d]
    for document in documents:
        if not document["apiVersion"].startswith(CERT_MANAGER):   # a CRD: no schema offline
            kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
    return documents


def _envoy_weights(documents: list[dict], service: str) -> dict[str, int]:
    config_map = next(d for d in documents if d["kind"] == "ConfigMap"
                      and d["metadata"]["name"].startswith("envoy-"))
    config = yaml.safe_load(config_map["data"]["envoy.yaml"])
    edge = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    for route in edge["typed_config"]["route_config"]["virtual_hosts"][0]["routes"]:
        split = route.get("route", {}).get("weighted_clusters")
        if split and route["name"] == service:
            return {c["name"]: c["weight"] for c in split["clusters"]}
    raise AssertionError(f"no weighted route for {service}")


@needs_kubectl
def test_kustomize_builds_the_base_with_the_topologys_weights(topo):
    documents = _kustomize(K8S / "base")
    assert {d["metadata"].get("namespace") for d in documents if d["kind"] != "Namespace"} == {"aimesh"}
    canary = deploy.canary_service(topo)
    assert _envoy_weights(documents, canary.name) == {
        f"{canary.name}-{i.version}": i.weight for i in canary.instances}


@needs_kubectl
def test_gpu_overlay_puts_triton_on_the_gpu_pool():
    triton = _find(_kustomize(K8S / "overlays" / "gpu"), "Deployment", "triton")
    pod = triton["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}


@needs_kubectl
@pytest.mark.parametrize("share", deploy.CANARY_STEPS)
def test_canary_component_moves_the_share_to_the_newest_version(topo, share, tmp_path):
    # An overlay of the user's own, as docs/deploy.md shows (paths relative: kustomize refuses
    # absolute ones).
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({
        "resources": [os.path.relpath(K8S / "base", tmp_path)],
        "components": [os.path.relpath(K8S / "components" / f"canary-{share}", tmp_path)]}))
    canary = deploy.canary_service(topo)
    weights = _envoy_weights(_kustomize(tmp_path), canary.name)
    assert weights[f"{canary.name}-{canary.instances[-1].version}"] == share
    assert sum(weights.values()) == 100


@pytest.mark.parametrize("config", ["deploy/compose/envoy.yaml", "deploy/k8s/base/envoy-config.yaml",
                                    *(f"deploy/k8s/components/canary-{s}/envoy-config.yaml"
                                      for s in deploy.CANARY_STEPS)])
def test_container_envoy_configs_pass_envoys_own_validation(config, tmp_path):
    page = tmp_path / "web"             # the page's files, as the gateway image has them
    page.mkdir()
    for file, _ in envoy.WEB_FILES.values():
        (page / file).write_text("page")
    text = (ROOT / config).read_text().replace(deploy.ENVOY_DESCRIPTOR_SET, str(paths.DESCRIPTOR_SET))
    text = text.replace(deploy.ENVOY_WEB_DIR, str(page))
    # The mounted certificates and SDS files, where this machine has them.
    authority = certs.Authority(tmp_path / "state")
    authority.export(GATEWAY, datetime.timedelta(hours=1), tmp_path / "certs")
    sds = tmp_path / "sds"
    sds.mkdir()
    for name, content in envoy.sds_files(deploy.envoy_certs(str(sds))).items():
        (sds / name).write_text(yaml.safe_dump(content).replace(deploy.CERTS_MOUNT, str(tmp_path / "certs")))
    for folder in (deploy.COMPOSE_ENVOY_SDS, deploy.ENVOY_CONFIG_DIR):
        text = text.replace(f"{folder}/envoy-", f"{sds}/envoy-")
    text = text.replace(deploy.CERTS_MOUNT, str(tmp_path / "certs"))
    (tmp_path / "envoy.yaml").write_text(text)
    envoy.validate(tmp_path / "envoy.yaml")


# --- in step with the topology ---------------------------------------------------------------

def _container_routes(config: dict) -> list:
    return [listener["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]
            for listener in config["static_resources"]["listeners"]]


@pytest.mark.parametrize("config", ["deploy/compose/envoy.yaml", "deploy/k8s/base/envoy-config.yaml"])
def test_container_envoy_routes_are_the_local_ones(topo, config):
    """Only addresses differ from the local runner's Envoy: every route, timeout, limit and
    weight is the topology's."""
    container = yaml.safe_load((ROOT / config).read_text())
    assert _container_routes(container) == _container_routes(
        envoy.render(topo, web_dir=deploy.ENVOY_WEB_DIR))
    assert [c["name"] for c in container["static_resources"]["clusters"]] == \
        [c["name"] for c in envoy.render(topo, otlp_endpoint="jaeger:4317")["static_resources"]
         ["clusters"]][:len(container["static_resources"]["clusters"])]
    assert "127.0.0.1" not in (ROOT / config).read_text()


def _endpoints(config: dict) -> dict[str, set[tuple[str, int]]]:
    return {c["name"]: {(e["endpoint"]["address"]["socket_address"]["address"],
                         e["endpoint"]["address"]["socket_address"]["port_value"])
                        for group in c["load_assignment"]["endpoints"] for e in group["lb_endpoints"]}
            for c in config["static_resources"]["clusters"]}


def test_every_compose_instance_is_the_topologys(topo, compose):
    services = compose["services"]
    for service, instance in topo.instances():
        container = services[instance.name]
        env = container["environment"]
        assert container["image"] == f"aimesh/{service.name}:{deploy.TAG}"
        assert (env["AIMESH_SERVICE"], env["AIMESH_INSTANCE"], env["AIMESH_VERSION"]) == \
            (service.name, instance.name, instance.version)
        assert int(env["AIMESH_PORT"]) == instance.port
        assert int(env["AIMESH_METRICS_PORT"]) == instance.metrics_port
        assert env["AIMESH_HOST"] == "0.0.0.0"      # reachable from Envoy and Prometheus
        assert container["healthcheck"]["test"] == deploy.grpc_probe(instance.probe_port)
        assert container["depends_on"] == {"postgres": {"condition": "service_healthy"},
                                           "nats": {"condition": "service_healthy"}}
        assert env["AIMESH_MESH_ADDRESS"] == f"envoy:{topo.gateway.mesh_port}"
    assert [n for n in services if n.startswith("search")] == ["search-1", "search-2"]
    assert {services[n]["environment"]["AIMESH_VERSION"] for n in services
            if n.startswith("recommend")} == {"v1", "v2"}
    # Envoy starts once every service is healthy; every healthy-gated container has a check.
    assert set(services["envoy"]["depends_on"]) == {i.name for _, i in topo.instances()}
    for name, container in services.items():
        for dependency, condition in container.get("depends_on", {}).items():
            if condition["condition"] == "service_healthy":
                assert "healthcheck" in services[dependency], f"{name} waits on {dependency}"


def test_compose_envoy_sends_each_cluster_to_the_containers_that_serve_it(topo, compose):
    config = yaml.safe_load((ROOT / "deploy/compose/envoy.yaml").read_text())
    listening = {(name, int(c["environment"]["AIMESH_PORT"]))
                 for name, c in compose["services"].items() if "environment" in c
                 and "AIMESH_PORT" in c["environment"]}
    listening.add(("triton", topo.infra.triton_grpc_port))
    listening.add(("user", topo.services["user"].jwks_port))
    listening.add(("jaeger", deploy.OTLP_PORT))
    endpoints = _endpoints(config)
    for name, hosts in endpoints.items():
        assert hosts <= listening, f"cluster {name} points at {hosts - listening}"
    assert endpoints["search"] == {(i.name, i.port) for i in topo.services["search"].instances}
    for instance in topo.services["recommend"].instances:
        assert endpoints[f"recommend-{instance.version}"] == {(instance.name, instance.port)}
    assert config["static_resources"]["listeners"][0]["address"]["socket_address"] == \
        {"address": "0.0.0.0", "port_value": topo.gateway.edge_port}


def test_prometheus_scrapes_every_metrics_endpoint(topo):
    config = yaml.safe_load((ROOT / "deploy/compose/prometheus.yml").read_text())
    targets = {job["job_name"]: {t for c in job["static_configs"] for t in c["targets"]}
               for job in config["scrape_configs"]}
    assert targets["services"] == {f"{i.name}:{i.metrics_port}" for _, i in topo.instances()}
    assert targets["envoy"] == {f"envoy:{topo.gateway.admin_port}"}
    assert targets["triton"] == {f"triton:{topo.infra.triton_metrics_port}"}


def test_grafana_dashboard_reads_metrics_that_exist():
    exprs = " ".join(t["expr"] for p in json.loads(
        (ROOT / "deploy/grafana/dashboards/aimesh.json").read_text())["panels"]
        for t in p["targets"])
    telemetry = (ROOT / "services/kit/telemetry.py").read_text()
    for metric in set(re.findall(r"aimesh_grpc_server_\w+?(?=_bucket|\b)", exprs)):
        assert f'"{metric}"' in telemetry, metric
    for needed in ("nv_inference_request_duration_us", "envoy_cluster_upstream_rq_total",
                   "envoy_cluster_circuit_breakers_default_rq_open"):
        assert needed in exprs


def test_every_k8s_workload_is_the_topologys(topo, manifests):
    for workload in deploy.workloads(topo):
        port = workload.instance.port
        deployment = _find(manifests, "Deployment", workload.name)
        assert deployment["spec"]["replicas"] == workload.replicas
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        assert container["image"] == f"aimesh/{workload.service.name}:{deploy.TAG}"
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert int(env["AIMESH_PORT"]) == port
        assert env["AIMESH_VERSION"] == workload.instance.version
        assert {p["name"]: p["containerPort"] for p in container["ports"]}["grpc"] == port
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):   # plaintext, health only
            assert container[probe]["grpc"] == {"port": workload.instance.probe_port}
        assert container["resources"]["requests"]
        service = _find(manifests, "Service", workload.name)
        assert {p["name"]: p["port"] for p in service["spec"]["ports"]}["grpc"] == port
        assert _find(manifests, "PodDisruptionBudget", workload.name)
        autoscaled = [d for d in manifests if d["kind"] == "HorizontalPodAutoscaler"
                      and d["metadata"]["name"] == workload.name]
        assert bool(autoscaled) == (len(workload.service.instances) > 1)
    assert _find(manifests, "Deployment", "search")["spec"]["replicas"] == \
        len(topo.services["search"].instances)


def test_k8s_envoy_sends_each_cluster_to_a_service_that_serves_it(topo, manifests):
    config = yaml.safe_load((K8S / "base" / "envoy-config.yaml").read_text())
    served = {(d["metadata"]["name"], p["port"]) for d in manifests if d["kind"] == "Service"
              for p in d["spec"]["ports"]}
    for name, hosts in _endpoints(config).items():
        assert hosts <= served, f"cluster {name} points at {hosts - served}"
    assert _endpoints(config)["search"] == {("search", topo.services["search"].instances[0].port)}


def test_images_are_ours_or_pinned_official_ones(compose, manifests):
    images = {c["image"] for c in compose["services"].values()}
    images |= {c["image"] for d in manifests if d["kind"] in ("Deployment", "StatefulSet")
               for c in d["spec"]["template"]["spec"]["containers"]}
    for name in images:
        repository, _, tag = name.rpartition(":")
        assert repository and tag and tag != "latest", name
        if repository.startswith("aimesh/"):
            assert tag == deploy.TAG
    built = {c["image"]: c["build"] for c in compose["services"].values() if "build" in c}
    for name in images:
        if name.startswith("aimesh/"):
            assert name in built, f"{name} is not built by docker-compose.yml"
            assert (ROOT / built[name]["dockerfile"]).is_file()


def test_weight_steps_add_up_to_a_hundred(topo):
    canary = deploy.canary_service(topo)
    for share in (0, 10, 33, 50, 100):
        stepped = deploy.with_weights(topo, canary.name, share).services[canary.name]
        assert sum(i.weight for i in stepped.instances) == 100
        assert stepped.instances[-1].weight == share
    three = dataclasses.replace(canary, instances=(*canary.instances, dataclasses.replace(
        canary.instances[-1], name="recommend-v3", version="v3", weight=0)))
    topo3 = dataclasses.replace(topo, services={**topo.services, canary.name: three})
    assert sum(i.weight for i in deploy.with_weights(topo3, canary.name, 25)
               .services[canary.name].instances) == 100


# --- workload identity in the deployments ------------------------------------------------------

def test_each_compose_container_mounts_only_its_own_certificate(topo):
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    mounts = {name: [v for v in c.get("volumes", []) if deploy.CERTS_MOUNT in v]
              for name, c in compose.items()}
    for service, instance in topo.instances():
        assert mounts[instance.name] == [f"./{deploy.COMPOSE_CERTS}/{service.name}:{deploy.CERTS_MOUNT}:ro"]
    assert mounts["envoy"] == [f"./{deploy.COMPOSE_CERTS}/{GATEWAY}:{deploy.CERTS_MOUNT}:ro"]
    assert mounts["triton"] == [] and compose["triton"]["networks"] == ["inference"]
    assert "inference" in compose["envoy"]["networks"]


def test_each_service_logs_in_as_its_own_role_in_the_deployments(topo, manifests):
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    for service, instance in topo.instances():
        assert compose[instance.name]["environment"]["AIMESH_POSTGRES_DSN"].startswith(
            f"postgresql://{service.name}:")
    script = (ROOT / "deploy" / "k8s" / "base" / "postgres-init.sh").read_text()
    for name in topo.services:
        assert f'ALTER ROLE "{name}" LOGIN NOSUPERUSER' in script
        assert f'-v {name}_password="${deploy.password_variable(name)}"' in script


@needs_kubectl
def test_cert_manager_issues_every_workload_its_spiffe_id(topo):
    documents = _kustomize(K8S / "overlays" / "gpu")
    issued = {d["spec"]["secretName"]: d["spec"]["uris"] for d in documents
              if d["kind"] == "Certificate"}
    for workload in topo.workloads():
        if workload != certs.OPERATOR:
            assert issued[f"{workload}-tls"] == [spiffe_id(workload)]
    mounted = {d["metadata"]["name"]: [v["secret"]["secretName"] for v in
                                       d["spec"]["template"]["spec"].get("volumes", []) if "secret" in v]
               for d in documents if d["kind"] in ("Deployment", "StatefulSet")}
    for workload in deploy.workloads(topo):
        assert mounted[workload.name] == [f"{workload.service.name}-tls"]
    assert mounted["envoy"] == ["gateway-tls"] and mounted["nats"] == ["nats-tls"]
    policy = _find(documents, "NetworkPolicy", "triton")
    assert policy["spec"]["ingress"][0]["from"] == [{"podSelector": {"matchLabels": {
        "app.kubernetes.io/name": "envoy"}}}]


def test_tritons_own_spans_only_when_the_topology_asks(topo, compose):
    """Triton 2.51 crashes under sustained traced load (aimesh.traces.triton_level): the compose
    Triton sends to Jaeger but traces nothing of its own unless observability.triton_spans says."""
    from aimesh.deploy.workloads import triton_args

    def level(args: list[str]) -> str:
        return next(a.split("level=", 1)[1] for a in args if a.startswith("--trace-config=level="))
    assert level(compose["services"]["triton"]["command"]) == "OFF"
    asked = dataclasses.replace(topo, observability=dataclasses.replace(topo.observability, triton_spans=True))
    assert level(triton_args(asked, otlp_http="http://jaeger:4318/v1/traces")) == "TIMESTAMPS"
    sampled = dataclasses.replace(asked, observability=dataclasses.replace(asked.observability, trace_sampling=0.5))
    assert level(triton_args(sampled, otlp_http="http://jaeger:4318/v1/traces")) == "OFF"
