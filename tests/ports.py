"""Port offsets of what the tests start, all from one base (AIMESH_TEST_PORT_OFFSET, default
10000), so two test runs on one machine can be kept apart: bases 10000, 10040, 10110, 10290 and
10360 give pairwise disjoint ports, and none of a default (0) or bench (2000) mesh's."""
import os

BASE = int(os.environ.get("AIMESH_TEST_PORT_OFFSET", "10000"))
SESSION_MESH = BASE
FAILING_MESH = BASE + 500
TRITON_ONLY = BASE + 700
PORT_CHECK = BASE + 1500
SLOW_UPSTREAM = BASE + 2300     # a lone Envoy in front of a deliberately slow service
