"""How chat_lm serves an answer (triton_models/chat_lm/1/model.py, outside Triton): the tokens
the engine makes go out in responses, the first at once, the ones made within flush_ms of the
last response together with the next; the parameters come from config.pbtxt."""
import re

import pytest

from aimesh import paths
from tests.unit.models.served import chat_lm


@pytest.fixture(scope="module")
def model():
    return chat_lm()


def test_the_first_token_goes_at_once_and_quick_ones_wait_for_the_next_response(model):
    pieces = model.Coalescer(flush_s=0.05)
    sent = [pieces.add(text, now) for text, now in
            [("I", 0.0), (" suggest", 0.01), (" Heat", 0.02), (" (", 0.06), ("1995", 0.07), (")", 0.2)]]
    assert sent == ["I", None, None, " suggest Heat (", None, "1995)"]
    assert pieces.tokens == 6 and pieces.rest() == ""


def test_what_is_left_goes_with_the_final_response(model):
    pieces = model.Coalescer(flush_s=0.05)
    assert [pieces.add(text, now) for text, now in [("a", 0.0), ("b", 0.01), ("c", 0.02)]] == ["a", None, None]
    assert pieces.rest() == "bc" and pieces.tokens == 3


def test_no_flush_interval_sends_every_token(model):
    pieces = model.Coalescer(flush_s=0)
    assert [pieces.add(text, 0.0) for text in "abc"] == ["a", "b", "c"]


def test_the_serving_parameters_come_from_the_config(model):
    config = (paths.TRITON_MODELS / "chat_lm" / "config.pbtxt").read_text()
    parameters = {key: {"string_value": value} for key, value in
                  re.findall(r'key: "(\w+)" value: \{ string_value: "(-?\d+)" \}', config)}
    engine, serving = model.settings({"parameters": parameters})
    assert serving.flush_s == int(parameters["flush_ms"]["string_value"]) / 1000 > 0
    assert serving.queue == int(parameters["queue"]["string_value"])
    assert engine.slots == int(parameters["slots"]["string_value"])
