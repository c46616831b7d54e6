"""The recommender build's evaluation protocol and its ranking code, on the real MovieLens data and
small hand-made factors (no servers, no torch)."""
from __future__ import annotations

import collections

import numpy as np

from aimesh.models import recommender
from services.kit import movielens


def test_each_users_latest_tenth_is_held_out():
    item_ids = np.array([m.item_id for m in movielens.movies()])
    ratings = movielens.ratings()
    split = recommender.split_by_time(ratings, item_ids)
    when = {(r.user_id, r.item_id): r.timestamp for r in ratings}
    per_user = collections.Counter(r.user_id for r in ratings)
    assert sum(len(t) for t in split.train.values()) + sum(len(t) for t in split.test.values()) \
        == len(ratings)
    for user, train_rows in split.train.items():
        test_rows = split.test[user]
        assert len(test_rows) == max(1, round(per_user[user] * 0.1))
        latest_trained = max(when[user, int(item_ids[row])] for row in train_rows)
        assert all(when[user, int(item_ids[row])] >= latest_trained for row in test_rows)


def ranker(known=(True, True, True, False), content=None):
    """Four items: 10 and 11 alike, 12 apart, 13 never rated (zero factors)."""
    factors = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.0, 0.0]])
    arrays = {"item_ids": np.array([10, 11, 12, 13]), "item_factors": factors,
              "gram": factors.T @ factors, "known": np.array(known),
              "popularity": np.array([5.0, 3.0, 4.0, 0.0]), "alpha": 5.0, "regularization": 0.1}
    if content is not None:
        arrays.update(content=content, content_weight=1.0)
    return recommender.ranking_module().Ranker(arrays)


def test_top_k_ranks_alike_items_first_and_skips_history_unknown_and_excluded():
    model = ranker()
    assert model.top_k([10], 2)[0].tolist() == [11, 12]
    assert model.top_k([10, 404], 3, exclude=[11])[0].tolist() == [12]   # 13 is not known


def test_an_empty_or_unknown_history_gets_the_most_popular():
    assert ranker().top_k([404], 2)[0].tolist() == [10, 12]


def test_content_lets_an_unrated_item_be_recommended():
    content = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [1.0, 0.0]])   # 13 reads like 10
    model = ranker(known=(True, True, True, True), content=content)
    assert model.top_k([10], 1)[0].tolist() == [13]
