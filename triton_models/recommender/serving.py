"""The Triton side of the recommender: tensors in, ranking.Ranker, tensors out. Shared by every
version folder's model.py; the version's arrays are in its `artifact` link (see config.pbtxt)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils
from ranking import Ranker

MAX_K = 1000


class TritonPythonModel:
    def initialize(self, args):
        version = args["model_version"]
        self.ranker = Ranker.load(Path(args["model_repository"]) / version / "artifact" / version
                                  / "recommender.npz")

    def execute(self, requests):
        return [self._answer(request) for request in requests]

    def _answer(self, request):
        history = pb_utils.get_input_tensor_by_name(request, "HISTORY").as_numpy().reshape(-1)
        k = pb_utils.get_input_tensor_by_name(request, "K").as_numpy().reshape(-1)
        exclude = pb_utils.get_input_tensor_by_name(request, "EXCLUDE")
        exclude = exclude.as_numpy().reshape(-1) if exclude is not None else ()
        if k.size != 1 or not 1 <= int(k[0]) <= MAX_K:
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(
                f"K must be one integer from 1 to {MAX_K}, got {k.tolist()}",
                pb_utils.TritonError.INVALID_ARG))
        item_ids, scores = self.ranker.top_k(history, int(k[0]), exclude)
        return pb_utils.InferenceResponse(output_tensors=[
            pb_utils.Tensor("ITEM_IDS", item_ids.astype(np.int64)),
            pb_utils.Tensor("SCORES", scores.astype(np.float32))])
