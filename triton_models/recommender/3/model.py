"""recommender version 3 (collaborative, fewer factors; swapped in at run time): the shared
serving code, with this version's arrays."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # serving.py, ranking.py

from serving import TritonPythonModel  # noqa: E402,F401  (Triton looks the class up here)
