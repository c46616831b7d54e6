"""The contracts: lint-clean, compatible with the committed baseline, and in step with the topology."""
import shutil
import subprocess

import pytest
from google.protobuf import descriptor_pb2

from aimesh import codegen, paths, topology


def test_buf_lint_is_clean():
    result = codegen.buf("lint")
    assert result.returncode == 0, result.stdout + result.stderr


def test_contracts_have_no_breaking_change_against_the_baseline():
    result = codegen.breaking()
    assert result.returncode == 0, result.stdout + result.stderr


def test_breaking_check_catches_a_deleted_field(tmp_path):
    """The breaking check can fail: a copy of the tree with a field removed is refused."""
    copy = tmp_path / "repo"
    copy.mkdir()
    for name in ("buf.yaml", "proto", "build"):
        source = paths.ROOT / name
        (shutil.copytree if source.is_dir() else shutil.copyfile)(source, copy / name)
    user_proto = copy / "proto" / "aimesh" / "user" / "v1" / "user.proto"
    user_proto.write_text(user_proto.read_text().replace("  string display_name = 3;\n", "", 1))
    result = subprocess.run([paths.venv_bin("buf"), "breaking", "proto", "--against",
                             "proto/baseline.binpb"], cwd=copy, capture_output=True, text=True)
    assert result.returncode != 0
    assert "display_name" in result.stdout


def _services_in_descriptor_set() -> set[str]:
    files = descriptor_pb2.FileDescriptorSet.FromString(paths.DESCRIPTOR_SET.read_bytes()).file
    return {f"{f.package}.{s.name}" for f in files for s in f.service}


def test_every_topology_service_has_a_contract():
    declared = _services_in_descriptor_set()
    topo = topology.load(port_offset=0)
    for service in topo.services.values():
        for name in service.grpc_services:
            if name.startswith("aimesh."):
                assert name in declared, f"{service.name} serves {name}, which no proto defines"


def test_every_contract_is_served_by_a_topology_service():
    served = {n for s in topology.load(port_offset=0).services.values() for n in s.grpc_services}
    for name in _services_in_descriptor_set():
        if name.startswith("aimesh."):
            assert name in served, f"{name} has no service in the topology"


@pytest.mark.parametrize("package", ["user", "search", "recommend", "notify"])
def test_unary_rpcs_carry_http_annotations(package):
    from google.api import annotations_pb2
    files = descriptor_pb2.FileDescriptorSet.FromString(paths.DESCRIPTOR_SET.read_bytes()).file
    [proto] = [f for f in files if f.package == f"aimesh.{package}.v1"]
    for service in proto.service:
        for method in service.method:
            if not (method.client_streaming or method.server_streaming):
                rule = method.options.Extensions[annotations_pb2.http]
                assert rule.WhichOneof("pattern"), f"{service.name}.{method.name} has no google.api.http"


def test_every_method_the_topology_names_exists():
    """A method named in the topology (public, or in the east-west allow list) that no contract
    defines would be a route or a permission for nothing."""
    topo = topology.load(port_offset=0)
    methods = topology.contract_methods()
    for service in topo.services.values():
        contracts = [g for g in service.grpc_services if g in methods]
        for method in service.public:
            if method != "*":
                assert any(method in methods[g] for g in contracts), f"{service.name}.{method}"
    for caller, allowed in topo.identity.calls.items():
        for entry in allowed:
            service, _, method = entry.partition(".")
            if method:
                assert any(method in methods[g] for g in topo.services[service].grpc_services
                           if g in methods), f"identity.calls.{caller}: {entry}"


def test_streaming_and_retries_come_from_the_contracts():
    topo = topology.load(port_offset=0)
    assert set(topo.services["chat"].streams) == {"Chat", "Ask"}          # stream in chat.proto
    assert "DeleteDocument" in topo.services["search"].idempotent          # idempotency_level
    assert "SubmitIndexJob" not in topo.services["search"].idempotent      # none: not retried


def test_slos_name_routes_of_the_contracts_and_read_as_shares_seconds_and_rates(tmp_path):
    topo = topology.load(port_offset=0)
    recommend = topo.slos["recommend.Recommend"]
    assert (recommend.availability, recommend.p99_s, recommend.load_rps) == (0.99, 0.25, 5.0)
    assert {"user.Login", "search.Search", "chat.Ask"} <= set(topo.slos)

    def refused(route: str, promise: str) -> str:
        path = tmp_path / "topology.yaml"
        path.write_text(f"extends: {paths.ROOT / 'aimesh' / 'topology.yaml'}\n"
                        f"slos:\n  {route}: {promise}\n")
        with pytest.raises(ValueError) as error:
            topology.load(path, port_offset=0)
        return str(error.value)

    good = "{availability: 99%, p99: 1s, at: 1/s}"
    assert "no method 'Recomend'" in refused("recommend.Recomend", good)
    assert "no service 'recomend'" in refused("recomend.Recommend", good)
    assert "a percentage" in refused("user.Login", "{availability: 0.99, p99: 1s, at: 1/s}")
    assert "p99 is a duration" in refused("user.Login", "{availability: 99%, p99: 0s, at: 1/s}")
    assert "at a rate" in refused("user.Login", "{availability: 99%, p99: 1s, at: 5}")
    assert "nothing else" in refused("user.UpdateProfile", "{availability: 99%, p99: 1s}")
