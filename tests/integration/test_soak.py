"""The soak's short variant (bench/load.py --soak, the load test's mix) on the session's mesh:
a minute of calls at a low rate with no error, and no component's file descriptors or Postgres
connections climbing. Memory is the long soak's business (`bin/aimesh load --soak`), not a test's."""
import json
import subprocess
import sys

from aimesh import paths

SLACK_FDS = 16           # a connection opened late (a pool growing to its size) is not a leak
# Each service's pool opens connections on demand (1 to 10): a peak of the mix late in the minute
# adds a few (31 -> 34 seen); a leak adds one a call or more, hundreds in the minute.
SLACK_CONNECTIONS = 6
# Postgres's backends open a table's files the first time they touch it, up to its
# max_files_per_process: its fds grow by design, and its connections are what must stay flat.
FDS_GROW_BY_DESIGN = {"postgres"}


def test_a_minute_of_the_mix_has_no_error_and_no_climbing_fds_or_connections(mesh, tmp_path):
    report = tmp_path / "soak.json"
    run = subprocess.run(
        [sys.executable, str(paths.ROOT / "bench" / "load.py"), "--soak", "--attach",
         "--minutes", "1", "--warmup", "0", "--rate", "8", "--accounts", "5", "--json", str(report)],
        env={**mesh.env, "PYTHONPATH": f"{paths.ROOT}:{paths.GEN / 'python'}"},
        cwd=paths.ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    soaked = json.loads(report.read_text())
    assert soaked["calls"] > 300 and soaked["errors"] == 0
    series = soaked["series"]
    warm = next(sample for t, sample in series if t >= 20)
    last = series[-1][1]
    for component, (_, fds, _) in last.items():
        if component == "postgres connections":
            assert fds <= warm[component][1] + SLACK_CONNECTIONS, \
                f"Postgres connections {warm[component][1]} -> {fds}"
        elif component not in FDS_GROW_BY_DESIGN:
            assert fds <= warm[component][1] + SLACK_FDS, f"{component}: fds {warm[component][1]} -> {fds}"
