"""moderation: TEXT (one string per row) -> UNSAFE (fp32 [1]) and CATEGORY (string [1]).

Embeds the texts by calling the text_embedding model in this Triton (BLS: one call for every row
of the batch; a blank text is not sent, it is safe), then scores them against the built examples
(scoring.py beside config.pbtxt). The examples come from `aimesh models build` through the
`artifact` link beside this file; k and the threshold from config.pbtxt's parameters.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # scoring.py

from scoring import Scorer  # noqa: E402

ARTIFACT = Path(__file__).parent / "artifact"
EMBEDDING_MODEL = "text_embedding"      # TEXT -> EMBEDDING (fp32 [384], unit length)
DEFAULTS = {"k": "5", "threshold": "0.5"}


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        parameters = {**DEFAULTS, **{name: value["string_value"]
                                     for name, value in config.get("parameters", {}).items()}}
        self.scorer = Scorer.load(ARTIFACT, k=int(parameters["k"]),
                                  threshold=float(parameters["threshold"]))
        print(f"moderation: {len(self.scorer.labels)} examples, k={self.scorer.k}, "
              f"threshold={self.scorer.threshold}", flush=True)

    def execute(self, requests):
        # Dynamic batching hands over several requests at once: embed all their rows in one call.
        texts, counts = [], []
        for request in requests:
            rows = pb_utils.get_input_tensor_by_name(request, "TEXT").as_numpy().reshape(-1)
            texts.extend(t.decode("utf-8", "replace") if isinstance(t, bytes) else str(t)
                         for t in rows)
            counts.append(len(rows))
        try:
            unsafe, categories = self.scorer.texts(texts, self.embed)
        except pb_utils.TritonModelException as failure:
            error = pb_utils.TritonError(f"{EMBEDDING_MODEL}: {failure}",
                                         pb_utils.TritonError.UNAVAILABLE)
            return [pb_utils.InferenceResponse(error=error) for _ in requests]
        responses, start = [], 0
        for count in counts:
            rows = slice(start, start + count)
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("UNSAFE", unsafe[rows].reshape(-1, 1)),
                pb_utils.Tensor("CATEGORY", np.array([c.encode() for c in categories[rows]],
                                                     dtype=np.object_).reshape(-1, 1))]))
            start += count
        return responses

    def embed(self, texts: list[str]) -> np.ndarray:
        """Unit embeddings [len(texts), 384] from the text_embedding model, in CPU memory (where
        text_embedding runs on a GPU, its output would otherwise stay there)."""
        response = pb_utils.InferenceRequest(
            model_name=EMBEDDING_MODEL, requested_output_names=["EMBEDDING"],
            inputs=[pb_utils.Tensor("TEXT", np.array([t.encode() for t in texts],
                                                     dtype=np.object_).reshape(-1, 1))],
            preferred_memory=pb_utils.PreferredMemory(pb_utils.TRITONSERVER_MEMORY_CPU, 0),
        ).exec()
        if response.has_error():
            raise pb_utils.TritonModelException(response.error().message())
        return pb_utils.get_output_tensor_by_name(response, "EMBEDDING").as_numpy()
