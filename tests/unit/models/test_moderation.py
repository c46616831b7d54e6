"""Moderation's scoring (triton_models/moderation/scoring.py) on small hand-made vectors, and the
labelled set it is built from (no servers, no model)."""
from __future__ import annotations

import re

import numpy as np
import pytest

from aimesh.models import moderation

scoring = moderation.scoring_module()
CATEGORIES = {"violence", "self_harm", "hate", "sexual", "illegal"}


def unit(*rows):
    vectors = np.array(rows, dtype=np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def scorer(k=3, threshold=0.5):
    """Three safe examples around the x axis, two hate and one violence example around y."""
    examples = unit([1, 0.1], [1, -0.1], [1, 0.2], [0.1, 1], [-0.1, 1], [0.3, 1])
    labels = ["safe", "safe", "safe", "hate", "hate", "violence"]
    return scoring.Scorer(examples, labels, k, threshold)


def test_nearest_is_most_similar_first_with_ties_by_lower_column_and_k_capped():
    rows, sims = scoring.nearest(np.array([[0.2, 0.9, 0.2, 0.5]]), 3)
    assert rows.tolist() == [[1, 3, 0]] and sims.tolist() == [[0.9, 0.5, 0.2]]
    assert scoring.nearest(np.array([[0.1, 0.3]]), 5)[0].tolist() == [[1, 0]]


def test_unsafe_share_weights_each_neighbour_by_its_similarity():
    share = scoring.unsafe_share(np.array([[0.9, 0.3], [0.5, -0.4]]),
                                 np.array([[True, False], [False, True]]))
    assert share.dtype == np.float32
    assert share.tolist() == pytest.approx([0.75, 0.0])     # a negative similarity counts zero


def test_unsafe_share_counts_plainly_when_no_neighbour_is_similar():
    share = scoring.unsafe_share(np.array([[-0.2, -0.1, 0.0]]), np.array([[True, False, True]]))
    assert share.tolist() == pytest.approx([2 / 3])


def test_a_text_among_unsafe_examples_gets_the_nearest_unsafe_category():
    unsafe, categories = scorer()(unit([0.25, 1], [1, 0]))
    assert unsafe[0] == pytest.approx(1.0) and categories[0] == "violence"   # [0.3, 1] is nearest
    assert unsafe[1] == pytest.approx(0.0) and categories[1] == ""


def test_a_category_is_given_exactly_when_unsafe_reaches_the_threshold():
    vectors = np.random.default_rng(3).normal(size=(200, 2))
    for threshold in (0.2, 0.5, 0.9):
        unsafe, categories = scorer(k=4, threshold=threshold)(vectors)
        assert ((unsafe >= 0) & (unsafe <= 1)).all()
        assert [bool(c) for c in categories] == (unsafe >= threshold).tolist()
        assert set(categories) <= {"", "hate", "violence"}


def test_a_blank_text_is_safe_and_never_embedded():
    embedded = []

    def embed(texts):
        embedded.extend(texts)
        return unit(*([0.1, 1] for _ in texts))
    unsafe, categories = scorer().texts(["", "threat", "  \n"], embed)
    assert embedded == ["threat"]
    assert unsafe.tolist() == pytest.approx([0.0, 1.0, 0.0]) and categories == ["", "hate", ""]
    assert scorer().texts(["", " "], embed)[1] == ["", ""] and embedded == ["threat"]


@pytest.mark.parametrize("k, threshold", [(0, 0.5), (3, 0.0), (3, 1.5)])
def test_a_k_or_threshold_out_of_range_is_refused(k, threshold):
    with pytest.raises(ValueError):
        scorer(k, threshold)


def test_the_served_defaults_are_valid_and_in_the_builds_grid():
    config = (moderation.ROOT / "triton_models" / "moderation" / "config.pbtxt").read_text()
    values = dict(re.findall(r'key:\s*"(\w+)"\s*value:\s*\{\s*string_value:\s*"([^"]+)"', config))
    assert int(values["k"]) in moderation.GRID_K
    assert float(values["threshold"]) in moderation.GRID_THRESHOLD


def test_the_labelled_set_is_well_formed_and_balanced():
    for part, least in (("train", 140), ("heldout", 55)):
        items = moderation.examples(part)
        assert len(items) >= least, part
        for item in items:
            assert set(item) == {"text", "label"}, item
            assert isinstance(item["text"], str) and item["text"].strip(), item
            assert item["label"] in CATEGORIES | {scoring.SAFE}, item
        labels = [item["label"] for item in items]
        assert abs(labels.count(scoring.SAFE) - len(labels) / 2) <= len(labels) / 10, part
        assert all(labels.count(category) >= 5 for category in CATEGORIES), part


def test_train_and_heldout_share_no_text_and_repeat_none():
    def normal(text):
        return " ".join(re.sub(r"[^a-z0-9 ]", " ", text.lower()).split())
    train = [normal(item["text"]) for item in moderation.examples("train")]
    heldout = [normal(item["text"]) for item in moderation.examples("heldout")]
    assert len(set(train)) == len(train) and len(set(heldout)) == len(heldout)
    assert not set(train) & set(heldout)


def test_figures_count_unsafe_as_the_positive_class():
    predicted = np.array([True, True, False, False])
    truth = np.array([True, False, True, False])
    assert moderation.figures(predicted, truth) == {
        "n": 4, "accuracy": 0.5, "unsafe_precision": 0.5, "unsafe_recall": 0.5}
