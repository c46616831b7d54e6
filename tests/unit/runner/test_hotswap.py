"""Model hot-swap's bookkeeping: which version answers for which, what Triton serves after a
restart, and the services' live reading of it (aimesh/hotswap.py, kit.inference.ModelVersions)."""
from __future__ import annotations

import os

from aimesh import hotswap
from services.kit.inference import ModelVersions

CONFIG = 'name: "recommender"\nversion_policy: { specific { versions: [1, 2] } }\nmax_batch_size: 0\n'


def test_whoever_got_the_old_version_gets_the_new_one():
    assert hotswap.remapped({}, "recommender", "1", "3") == {"recommender": {"1": "3"}}
    back = hotswap.remapped({"recommender": {"1": "3"}}, "recommender", "3", "1")
    assert back == {"recommender": {"3": "1"}}        # asking for 1 gets 1 again: no entry
    onward = hotswap.remapped({"recommender": {"1": "3"}, "other": {"1": "2"}}, "recommender", "3", "4")
    assert onward == {"other": {"1": "2"}, "recommender": {"1": "4", "3": "4"}}


def test_triton_started_after_a_swap_serves_the_swapped_versions():
    assert "versions: [2, 3] }" in hotswap.served_policy(CONFIG, {"1": "3"})
    assert hotswap.served_policy(CONFIG, {}) == CONFIG
    assert hotswap.served_policy(CONFIG, {"3": "1"}) == CONFIG     # 3 is not served: nothing to do
    assert hotswap.served_policy('version_policy: { all {} }', {"1": "3"}) == 'version_policy: { all {} }'


def test_a_service_reads_a_swap_when_the_file_changes(tmp_path, monkeypatch):
    monkeypatch.setattr(ModelVersions, "CHECK_EVERY_S", 0.0)
    file = tmp_path / hotswap.FILE
    versions = ModelVersions(file)
    assert versions.served("recommender", "1") == "1"          # no file: no swap
    hotswap._save(tmp_path, {"recommender": {"1": "3"}})
    assert versions.served("recommender", "1") == "3"
    assert versions.served("recommender", "2") == "2" and versions.served("other", "1") == "1"
    os.remove(file)
    assert versions.served("recommender", "1") == "1"
    assert ModelVersions(None).served("recommender", "1") == "1"
