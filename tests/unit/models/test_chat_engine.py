"""chat_lm's engine in-process (triton_models/chat_lm/1/generation.py, the real model): prompts too
long for a slot lose their oldest turns and keep the system prompt and the question; a stop asked
for by the caller ends the generation; the counts are the engine's tokens; a conversation's next
turn is read from where the one before ended; a greedy answer does not depend on what the engine
served before."""
import concurrent.futures
import dataclasses
import hashlib
import importlib.util
import json
import random
import re
import sys

import pytest

from aimesh import models, paths
from aimesh.models import chat_lm

SLOT = 512
WEIGHTS = models.output("chat_lm") / chat_lm.WEIGHTS


@pytest.fixture(scope="module")
def generation():
    path = paths.TRITON_MODELS / "chat_lm" / "1" / "generation.py"
    spec = importlib.util.spec_from_file_location("chat_generation", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module     # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def engine(generation):
    return generation.Engine(WEIGHTS, generation.Settings(slots=2, context_per_slot=SLOT, threads=1))


def turns(n: int) -> list[dict]:
    return [{"role": "user" if i % 2 == 0 else "assistant", "content": f"turn {i}: " + "word " * 60}
            for i in range(n)]


def test_a_prompt_that_fits_is_kept_whole(engine):
    messages = [{"role": "system", "content": "Be brief."}, *turns(2), {"role": "user", "content": "Hi"}]
    assert engine.fit(messages, 32) == messages


def test_a_long_prompt_loses_its_oldest_turns_first(engine):
    system, question = {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}
    earlier = turns(12)                          # about 800 tokens: more than a slot
    kept = engine.fit([system, *earlier, question], 64)
    assert kept[0] == system and kept[-1] == question
    assert kept[1:-1] == earlier[len(earlier) - (len(kept) - 2):]   # the newest turns, in order
    assert 2 < len(kept) < len(earlier) + 2
    assert engine.count(kept) <= SLOT - 64


def test_an_answers_beginning_stays_with_its_question(engine):
    system, question = {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}
    beginning = {"role": "assistant", "content": "Toy Story (1995).\n"}
    kept = engine.fit([system, *turns(12), question, beginning], 64)
    assert kept[0] == system and kept[-2:] == [question, beginning]


def test_a_question_too_long_for_any_answer_is_refused(engine, generation):
    with pytest.raises(generation.PromptTooLong):
        engine.fit([{"role": "user", "content": "word " * 600}], 16)


def test_the_callers_stop_ends_the_generation_and_counts_tokens(engine):
    pieces = []
    result = engine.generate([{"role": "user", "content": "Tell me a long story."}], 200,
                             lambda text: pieces.append(text) or len(pieces) >= 3)
    assert result.finish_reason == "cancelled" and result.completion_tokens == len(pieces) == 3
    assert result.prompt_tokens > 5
    # greedy: a sampled answer may end on its own within 6 tokens (seen once in a run)
    whole = engine.generate([{"role": "user", "content": "Tell me a long story."}], 6,
                            lambda text: False, temperature=0)
    assert whole.finish_reason == "length" and whole.completion_tokens == 6


def test_a_full_length_answer_runs_past_its_end_to_max_tokens(engine):
    """The benchmark's full-length rows: the end-of-text token does not end the answer."""
    asked = [{"role": "user", "content": "Answer with one word: is the sky blue?"}]
    short = engine.generate(asked, 48, lambda text: False, temperature=0)
    assert short.finish_reason == "stop" and short.completion_tokens < 48
    full = engine.generate(asked, 48, lambda text: False, temperature=0, full_length=True)
    assert full.finish_reason == "length" and full.completion_tokens == 48


def test_a_follow_up_turn_is_read_from_where_the_turn_before_ended(engine):
    """chat-svc's prompt for a conversation's next turn begins with the text the engine read and
    wrote for the turn before, so it reads only the new turn (services/chat/model.py)."""
    from services.chat.model import catalog, lead, messages
    from services.chat.store import Turn
    from tests.unit.test_chat_prompt import hits

    first_hits = hits("Heat", "Casino", "Fargo")
    first_prompt = messages("Something tense?", first_hits, [])
    pieces = []
    first = engine.generate(first_prompt, 40, lambda text: pieces.append(text) and False, stop=["\n"])
    earlier = [Turn("Something tense?", catalog(first_hits), lead(first_hits) + "".join(pieces))]
    second = engine.generate(messages("And for children?", hits("Babe", "Balto"), earlier), 8, lambda text: False)
    assert second.prompt_tokens > first.prompt_tokens + first.completion_tokens
    assert second.cached_tokens >= first.prompt_tokens        # the whole first prompt, at least
    assert second.prompt_tokens - second.cached_tokens < first.prompt_tokens   # read: the new turn


def test_the_cited_grammar_keeps_other_years_and_quoted_titles_out(engine, generation):
    asked = [{"role": "user", "content": "List three films with their years in parentheses, each "
                                         "title in quotes."}]

    def answer(grammar=None) -> str:
        pieces = []
        engine.generate(asked, 40, lambda text: pieces.append(text) and False, temperature=0.0,
                        grammar=grammar)
        return "".join(pieces)
    free = answer()
    assert set(re.findall(r"\((\d{4})", free)) - {"1995"}      # the model writes other years
    held = answer(generation.cited_only(["Toy Story"], ["1995"]))
    assert set(re.findall(r"\((\d{4})", held)) <= {"1995"}
    assert set(re.findall(r'"([^"]*)"', held)) <= {"Toy Story"}


def test_the_served_weights_are_the_shipped_model_re_encoded():
    """The artifact is built from the package's file, every Q4_1 tensor re-encoded as Q4_0 within
    one of Q4_1's own steps (aimesh/models/chat_lm.py)."""
    built = json.loads((WEIGHTS.parent / "metrics.json").read_text())
    shipped = hashlib.sha256(chat_lm.source().read_bytes()).hexdigest()
    assert built["source_sha256"] == shipped and built["tensors_re_encoded"] > 0
    assert built["encoding"] == "Q4_0" and built["worst_error_of_a_q4_1_step"] <= 1.0


def test_every_engine_parameter_of_the_served_config_reaches_the_engine(generation):
    """A key config.pbtxt sets but Settings lacks would be ignored without a word: the prompt cache's
    bound among them (unbounded, llama.cpp's own default grew chat_lm's memory for hours)."""
    config = (paths.TRITON_MODELS / "chat_lm" / "config.pbtxt").read_text()
    keys = set(re.findall(r'parameters \{ key: "(\w+)"', config))
    fields = {field.name for field in dataclasses.fields(generation.Settings)}
    assert keys - {"queue", "flush_ms"} == fields    # those two are model.py's (Serving)
    assert 0 < int(re.search(r'key: "prompt_cache_mib" value: \{ string_value: "(\d+)"', config)[1]) <= 256


def test_a_greedy_answer_depends_on_its_prompt_alone(generation):
    """With the served settings (8 slots, the bounded prompt cache), after the cache has filled with
    other prompts, the same greedy prompt writes the same text: the content tests rely on it, and a
    saga step run again writes what it wrote. (Resuming from others' cached prefixes changed it.)"""
    engine = generation.Engine(WEIGHTS, generation.Settings())
    asked = [{"role": "system", "content": "You are aimesh's film writer. Write what is asked, in plain "
                                           "prose, and nothing else."},
             {"role": "user", "content": "Write a very short story (one paragraph) on its theme. "
                                         "Subject: the villain's speech in an action film, word for word"}]

    def answer(messages, temperature=0.0, max_tokens=120) -> str:
        pieces = []
        engine.generate(messages, max_tokens, lambda text: pieces.append(text) and False,
                        temperature=temperature, stop=["\n\n"])
        return "".join(pieces)
    first = answer(asked)
    rng, words = random.Random(1), "film toy space dog villain hero story night city love war ship".split()
    others = [[{"role": "system", "content": "You are a helpful film assistant. "
                                             + " ".join(rng.choice(words) for _ in range(300))},
               {"role": "user", "content": f"Tell me about {words[i % len(words)]}"}] for i in range(20)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda messages: answer(messages, 0.7, 8), others))
    assert answer(asked) == first
