"""The recommender artifact: versions 1, 2 and 3 of one Triton model, trained on MovieLens 100k.

Protocol. Each user's ratings are ordered by time (ties by item id); the latest 10% of each user's
ratings (at least one) are held out as the test split, the rest are the training split. A rating
of any value counts as one interaction (implicit feedback). Every model is asked for its top 10
for each user given that user's training history (history items excluded, as served) and scored
against the held-out items: Recall@10 = hits / held-out items, NDCG@10 with binary relevance.

    popularity  training interactions per item (the baseline, and recommend-svc's fallback)
    v1          collaborative: implicit-feedback matrix factorisation (ALS, Hu/Koren/Volinsky),
                only items seen in training can be recommended
    v3          v1 retrained with FACTORS_V3 factors: not loaded at start; `aimesh models swap
                recommender --from 1 --to 3` puts it in version 1's place while the mesh runs
    v2          hybrid: v1's factors plus each item's text embedding (title, year, genres, by
                all-MiniLM-L6-v2: the text_embedding artifact). Items nobody rated in training
                get factors mapped from their text (ridge regression fitted on the rated items),
                and every item's score adds the similarity of its text to the history's, so
                unrated items can be recommended.

The user is never stored: triton_models/recommender/ranking.py solves a user's factors from the
history at request time, and this build evaluates with that same code. The hyperparameters below
were chosen on a validation split carved the same way out of the training split (never on the
test split). Deterministic: fixed seed, float64 linear algebra.

Writes: 1/, 2/ and 3/recommender.npz (the arrays ranking.py reads), metrics.json, and
samples.json (a few users' histories and each version's top 10, for checking what Triton serves).
"""
from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
RANKING = ROOT / "triton_models" / "recommender" / "ranking.py"

HELD_OUT_FRACTION = 0.1
CUTOFF = 10
SEED = 7
FACTORS = 64
FACTORS_V3 = 32          # v3: the same model with fewer factors, a smaller artifact to swap in
ALPHA = 5.0              # confidence of an observed interaction is 1 + ALPHA
REGULARIZATION = 10.0
ITERATIONS = 15
CONTENT_RIDGE = 1.0      # L2 weight of the text -> factors map
# v2: weight of text similarity in the score. On the validation split 0.5 kept v1's accuracy
# (Recall@10 within 0.002); with it about half of the unrated items reach the top 10 for a
# history of the five rated films whose text is nearest theirs, with 0.1 none did.
CONTENT_WEIGHT = 0.5
EMBEDDING_BATCH = 64
SAMPLE_USERS = 8         # users whose top 10 per version is stored, to check Triton against


@dataclass(frozen=True)
class Split:
    item_ids: np.ndarray              # every catalog item id; row i of the matrices below
    train: dict[int, list[int]]       # user -> training items (rows), oldest first
    test: dict[int, list[int]]        # user -> held-out items (rows)


def _load(name: str, path: Path):
    if name not in sys.modules:   # registered before running: dataclasses look themselves up there
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None, path
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]


def ranking_module():
    """triton_models/recommender/ranking.py, loaded by path: serving code, not a package."""
    return _load("recommender_ranking", RANKING)


def movielens():
    """services/kit/movielens.py, loaded by path so the build does not import the service kit
    (grpc, asyncpg...) that the build environment does not have."""
    return _load("aimesh_build_movielens", ROOT / "services" / "kit" / "movielens.py")


def split_by_time(ratings, item_ids: np.ndarray, fraction: float = HELD_OUT_FRACTION) -> Split:
    row = {int(item): i for i, item in enumerate(item_ids)}
    by_user: dict[int, list] = {}
    for r in ratings:
        by_user.setdefault(r.user_id, []).append((r.timestamp, r.item_id))
    train, test = {}, {}
    for user, events in sorted(by_user.items()):
        events.sort()
        held_out = max(1, int(round(len(events) * fraction)))
        train[user] = [row[item] for _, item in events[:-held_out]]
        test[user] = [row[item] for _, item in events[-held_out:]]
    return Split(item_ids, train, test)


def interaction_matrix(split: Split) -> np.ndarray:
    users = sorted(split.train)
    matrix = np.zeros((len(users), len(split.item_ids)), dtype=np.float64)
    for u, user in enumerate(users):
        matrix[u, split.train[user]] = 1.0
    return matrix


def _solve_side(fixed: np.ndarray, interactions: np.ndarray, alpha: float,
                regularization: float) -> np.ndarray:
    """One ALS half-step: the best factors for each row of interactions, the other side fixed."""
    gram = fixed.T @ fixed
    solved = np.zeros((interactions.shape[0], fixed.shape[1]))
    eye = regularization * np.eye(fixed.shape[1])
    for i, observed in enumerate(interactions):
        seen = fixed[observed > 0]
        system = gram + alpha * seen.T @ seen + eye
        solved[i] = np.linalg.solve(system, (1.0 + alpha) * seen.sum(axis=0))
    return solved


def train_als(interactions: np.ndarray, factors: int = FACTORS, alpha: float = ALPHA,
              regularization: float = REGULARIZATION, iterations: int = ITERATIONS,
              seed: int = SEED) -> np.ndarray:
    """Item factors of implicit-feedback matrix factorisation (users are folded in at serving).
    An item with no interactions solves to exactly zero."""
    rng = np.random.default_rng(seed)
    items = rng.normal(scale=0.01, size=(interactions.shape[1], factors))
    for _ in range(iterations):
        users = _solve_side(items, interactions, alpha, regularization)
        items = _solve_side(users, interactions.T, alpha, regularization)
    return items


def item_text(movie) -> str:
    genres = ", ".join(movie.genres) if movie.genres else "unknown genre"
    year = f" ({movie.year})" if movie.year else ""
    return f"{movie.title}{year}. Genres: {genres}."


def embed_texts(texts: list[str], progress: Callable[[str], None]) -> np.ndarray:
    """Unit text embeddings from the text_embedding artifact (all-MiniLM-L6-v2 exported to ONNX):
    the vectors Triton's text_embedding serves, so an item added later can be embedded there."""
    import onnxruntime
    from tokenizers import Tokenizer

    import aimesh.models
    folder = aimesh.models.output("text_embedding")
    progress(f"embedding {len(texts)} item texts with text_embedding ({folder.name})")
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))   # truncates, pads to longest
    session = onnxruntime.InferenceSession(str(folder / "model.onnx"),
                                           providers=["CPUExecutionProvider"])
    vectors = []
    for start in range(0, len(texts), EMBEDDING_BATCH):
        encodings = tokenizer.encode_batch(texts[start:start + EMBEDDING_BATCH])
        vectors.append(session.run(None, {
            "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64)})[0])
    return np.concatenate(vectors).astype(np.float32)


def content_factors(content: np.ndarray, item_factors: np.ndarray, rated: np.ndarray,
                    ridge: float = CONTENT_RIDGE) -> np.ndarray:
    """Factors predicted from text: ridge regression text -> factors, fitted on rated items."""
    x = np.hstack([content[rated].astype(np.float64), np.ones((int(rated.sum()), 1))])
    weights = np.linalg.solve(x.T @ x + ridge * np.eye(x.shape[1]), x.T @ item_factors[rated])
    return np.hstack([content.astype(np.float64), np.ones((len(content), 1))]) @ weights


def version_arrays(split: Split, item_factors: np.ndarray, popularity: np.ndarray,
                   content: np.ndarray | None = None,
                   content_weight: float = CONTENT_WEIGHT) -> dict[str, np.ndarray]:
    """The arrays of one version (the format ranking.py documents)."""
    rated = popularity > 0
    arrays: dict[str, Any] = {"item_ids": split.item_ids.astype(np.int64), "popularity": popularity,
              "alpha": np.float64(ALPHA), "regularization": np.float64(REGULARIZATION)}
    if content is None:
        arrays["known"] = rated
    else:
        item_factors = np.where(rated[:, None], item_factors,
                                content_factors(content, item_factors, rated))
        arrays["known"] = np.ones(len(rated), dtype=bool)
        arrays["content"] = content
        arrays["content_weight"] = np.float64(content_weight)
    arrays["item_factors"] = item_factors.astype(np.float32)
    arrays["gram"] = item_factors.T @ item_factors
    return arrays


def evaluate(top_k: Callable[[list[int], int], np.ndarray], split: Split, unrated: set[int],
             cutoff: int = CUTOFF) -> dict[str, float]:
    """Mean Recall@cutoff and NDCG@cutoff over users, and how many hits were items nobody rated
    in training (only a model that reads item text can have any); top_k(history ids, k) -> ids."""
    discounts = 1.0 / np.log2(np.arange(2, cutoff + 2))
    recalls, ndcgs, unrated_hits = [], [], 0
    for user, train_rows in split.train.items():
        held_out = set(int(i) for i in split.item_ids[split.test[user]])
        ranked = top_k(split.item_ids[train_rows].tolist(), cutoff)
        hits = np.array([int(item) in held_out for item in ranked], dtype=np.float64)
        unrated_hits += sum(int(item) in held_out and int(item) in unrated for item in ranked)
        recalls.append(hits.sum() / len(held_out))
        ideal = discounts[:min(len(held_out), cutoff)].sum()
        ndcgs.append(float(hits @ discounts[:len(hits)]) / ideal)
    return {f"recall@{cutoff}": round(float(np.mean(recalls)), 4),
            f"ndcg@{cutoff}": round(float(np.mean(ndcgs)), 4),
            f"unrated_hits@{cutoff}": unrated_hits}


def popularity_top_k(split: Split, popularity: np.ndarray):
    order = np.lexsort((split.item_ids, -popularity))   # most rated first, ties by id

    def top_k(history: list[int], k: int) -> np.ndarray:
        seen = set(history)
        candidates = split.item_ids[order][:k + len(seen)]
        return np.array([i for i in candidates if int(i) not in seen][:k])
    return top_k


def build(out: Path, progress: Callable[[str], None]) -> None:
    ranking = ranking_module()
    data = movielens()
    movies = data.movies()
    item_ids = np.array([m.item_id for m in movies], dtype=np.int64)
    progress("splitting MovieLens 100k by time (latest 10% of each user held out)")
    split = split_by_time(data.ratings(), item_ids)
    interactions = interaction_matrix(split)
    popularity = interactions.sum(axis=0).astype(np.float32)
    unrated = {int(item) for item in item_ids[popularity == 0]}

    progress(f"training v1: implicit ALS, {FACTORS} factors, {ITERATIONS} iterations")
    item_factors = train_als(interactions)
    content = embed_texts([item_text(m) for m in movies], progress)

    progress(f"training v3: implicit ALS, {FACTORS_V3} factors")
    versions = {"1": version_arrays(split, item_factors, popularity),
                "2": version_arrays(split, item_factors, popularity, content),
                "3": version_arrays(split, train_als(interactions, factors=FACTORS_V3), popularity)}
    for version, arrays in versions.items():
        (out / version).mkdir(parents=True, exist_ok=True)
        np.savez(out / version / "recommender.npz", **arrays)

    progress("evaluating popularity, v1, v2 and v3 on the held-out split")
    metrics: dict[str, Any] = {"protocol": (__doc__ or "").split("\n\n")[1].replace("\n", " "),
               "users": len(split.train),
               "held_out_interactions": sum(len(t) for t in split.test.values()),
               "unrated_items": len(unrated),
               "held_out_on_unrated_items": sum(int(split.item_ids[row]) in unrated
                                                for rows in split.test.values() for row in rows),
               "text_embedding": "all-MiniLM-L6-v2, the text_embedding artifact's ONNX export",
               "models": {"popularity": evaluate(popularity_top_k(split, popularity), split,
                                                 unrated)}}
    samples = {}
    for version, arrays in versions.items():
        ranker = ranking.Ranker(arrays)

        def top(history, k, ranker=ranker):
            return ranker.top_k(history, k)[0]
        metrics["models"][f"v{version}"] = evaluate(top, split, unrated)
        samples[version] = [
            {"history": split.item_ids[split.train[user]].tolist(),
             "top_10": ranker.top_k(split.item_ids[split.train[user]], CUTOFF)[0].tolist()}
            for user in sorted(split.train)[:SAMPLE_USERS]]
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (out / "samples.json").write_text(json.dumps(samples) + "\n")
    for line in metrics_table(metrics).splitlines():
        progress(line)


def metrics_table(metrics: dict) -> str:
    lines = [f"{'model':<12}{'Recall@10':>10}{'NDCG@10':>10}  hits on unrated items (of "
             f"{metrics['held_out_on_unrated_items']} held out)"]
    for name, figures in metrics["models"].items():
        lines.append(f"{name:<12}{figures['recall@10']:>10.4f}{figures['ndcg@10']:>10.4f}"
                     f"  {figures['unrated_hits@10']}")
    return "\n".join(lines)
