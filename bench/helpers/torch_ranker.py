"""The recommender's scoring (triton_models/recommender/ranking.py) in torch on one device, many
histories at once: the candidate GPU path that bench/gpu_throughput.py weighs against numpy.

Same arithmetic as ranking.Ranker: the implicit-ALS fold-in (a float64 solve per user), item
scores, v2's content similarity, the history and unknown items masked out, top k. Ties at the cut
may come back in another order than Ranker's (torch.topk does not sort ties by item id)."""
from __future__ import annotations

import numpy as np


class TorchRanker:
    def __init__(self, ranker, device: str):
        import torch
        self.torch, self.ranker, self.device = torch, ranker, device
        self.factors = torch.from_numpy(ranker.factors).to(device)
        self.factors64 = self.factors.double()
        self.gram = torch.from_numpy(ranker.gram).to(device)
        self.unknown = torch.from_numpy(~ranker.known).to(device)
        self.popularity = torch.from_numpy(ranker.popularity).to(device)
        self.content = torch.from_numpy(ranker.content).to(device) if ranker.content is not None else None
        self.eye = torch.eye(self.gram.shape[0], dtype=torch.float64, device=device)

    def top_k(self, histories: list[list[int]], k: int) -> np.ndarray:
        """Item ids [len(histories), k], best first."""
        torch, r = self.torch, self.ranker
        rows = [r.rows(h) for h in histories]
        width = max(1, max(len(x) for x in rows))
        padded = np.zeros((len(rows), width), dtype=np.int64)
        present = np.zeros((len(rows), width), dtype=bool)
        for i, x in enumerate(rows):
            padded[i, :len(x)], present[i, :len(x)] = x, True
        index = torch.from_numpy(padded).to(self.device)
        mask = torch.from_numpy(present).to(self.device)

        seen = self.factors64[index] * mask[..., None]                       # [B, L, F]
        system = self.gram + r.alpha * seen.transpose(1, 2) @ seen + r.regularization * self.eye
        user = torch.linalg.solve(system, (1.0 + r.alpha) * seen.sum(dim=1))    # [B, F]
        scores = user.float() @ self.factors.T                                 # [B, N]
        if self.content is not None:
            taste = (self.content[index] * mask[..., None]).sum(dim=1) / mask.sum(dim=1, keepdim=True)
            taste = torch.nn.functional.normalize(taste, dim=1)
            scores += r.content_weight * (taste @ self.content.T)
        known_seen = (~self.unknown[index] & mask).any(dim=1, keepdim=True)
        scores = torch.where(known_seen, scores, self.popularity)
        scores = scores.masked_fill(self.unknown, -torch.inf)
        in_history = torch.zeros_like(scores, dtype=torch.int64).scatter_add_(1, index, mask.long())
        scores = scores.masked_fill(in_history > 0, -torch.inf)
        best = scores.topk(k, dim=1).indices.cpu().numpy()
        return r.item_ids[best]
