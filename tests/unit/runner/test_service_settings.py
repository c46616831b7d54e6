"""A service's settings go from the topology to its process's environment: bench/chat_latency.py's
second mesh (bench/chat_full_length.yaml) makes chat-svc ask for full-length answers, the default
topology does not."""
from aimesh import paths, services, topology
from services.kit.config import Config


def test_only_the_full_length_bench_topology_asks_chat_svc_for_full_answers(tmp_path):
    for topology_file, full_length in ((topology.DEFAULT_FILE, False),
                                       (paths.ROOT / "bench" / "chat_full_length.yaml", True)):
        topo = topology.load(topology_file, port_offset=0)
        chat = topo.services["chat"]
        settings = services.config(topo, chat, chat.instances[0], tmp_path, demo=False)
        assert Config.from_env(settings.to_env()).full_length is full_length
