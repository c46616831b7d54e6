"""Port offsets of what the tests start, all from one base (AIMESH_TEST_PORT_OFFSET, default
1000), so two test runs on one machine can be kept apart: bases 1000, 1014, 1028, 1042, 1056
and 1070 give pairwise disjoint ports (and none of the default mesh's)."""
import os

BASE = int(os.environ.get("AIMESH_TEST_PORT_OFFSET", "1000"))
SESSION_MESH = BASE
FAILING_MESH = BASE + 500
TRITON_ONLY = BASE + 700
PORT_CHECK = BASE + 1500
