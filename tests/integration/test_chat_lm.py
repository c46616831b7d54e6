"""chat_lm in the mesh's Triton (loaded by `aimesh up`): a decoupled model that streams its answer,
serves many answers at once, refuses past its queue, and stops generating when the client cancels.
Spoken to directly with tritonclient.grpc streams."""
from __future__ import annotations

import json
import queue
import time
import urllib.request
import uuid

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.client import wait_for

MODEL = "chat_lm"
RESPONSE_WITHIN_S = 120     # a bound on waiting for one response on a shared, slow machine
STORY = [{"role": "system", "content": "You are a storyteller who writes at great length."},
         {"role": "user", "content": "Tell me a very long story about a lighthouse keeper."}]


# Words the model, at temperature 0, repeats in its answer to "Repeat this word five times: W".
WORDS = ("zebra", "banana", "piano", "dragon", "rocket", "violin")


def open_stream(mesh):
    """A tritonclient gRPC stream to the mesh's Triton, and the queue its responses land in."""
    responses: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{mesh.topo.infra.triton_grpc_port}")
    client.start_stream(callback=lambda result, error: responses.put((result, error)))
    return client, responses


def close_stream(client) -> None:
    client.stop_stream(cancel_requests=True)
    client.close()


@pytest.fixture
def stream(mesh):
    client, responses = open_stream(mesh)
    yield client, responses
    close_stream(client)


@pytest.fixture
def streams(mesh):
    """Open as many streams as a test asks for; all are closed (their requests cancelled) after it."""
    opened = []

    def open_one():
        opened.append(open_stream(mesh))
        return opened[-1]
    yield open_one
    for client, _ in opened:
        close_stream(client)
    if opened:
        wait_until_free(mesh)


def wait_until_free(mesh) -> None:
    """A cancelled generation ends at its next token, a waiting one gives its place up when its
    turn comes: poll until the model takes a request again, so the next test finds it free."""
    def takes_one() -> bool:
        client, responses = open_stream(mesh)
        try:
            ask(client, [{"role": "user", "content": "Hi"}], max_tokens=1)
            answer(responses)
            return True
        except grpcclient.InferenceServerException as refused:
            assert "chat model busy" in str(refused), refused
            return False
        finally:
            close_stream(client)
    wait_for(takes_one, timeout_s=60, interval_s=0.2, what="chat_lm to take a request again")


def string_input(name: str, text: str) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(name, [1], "BYTES")
    tensor.set_data_from_numpy(np.array([text.encode()], dtype=np.object_))
    return tensor


def ask(client, messages, max_tokens: int, temperature: float = 0.7, stop=None,
        messages_json: str | None = None, cited_json: str | None = None, full_length: bool = False) -> None:
    max_tokens_input = grpcclient.InferInput("MAX_TOKENS", [1], "INT32")
    max_tokens_input.set_data_from_numpy(np.array([max_tokens], dtype=np.int32))
    temperature_input = grpcclient.InferInput("TEMPERATURE", [1], "FP32")
    temperature_input.set_data_from_numpy(np.array([temperature], dtype=np.float32))
    inputs = [string_input("MESSAGES", messages_json or json.dumps(messages)),
              max_tokens_input, temperature_input]
    if stop is not None:
        inputs.append(string_input("STOP", json.dumps(stop)))
    if cited_json is not None:
        inputs.append(string_input("CITED", cited_json))
    if full_length:
        full_length_input = grpcclient.InferInput("FULL_LENGTH", [1], "BOOL")
        full_length_input.set_data_from_numpy(np.array([True]))
        inputs.append(full_length_input)
    client.async_stream_infer(MODEL, inputs)


def next_response(responses: queue.Queue):
    result, error = responses.get(timeout=RESPONSE_WITHIN_S)
    if error is not None:
        raise error
    delta = result.as_numpy("DELTA")[0].decode("utf-8")
    finish = result.as_numpy("FINISH_REASON")
    return delta, None if finish is None else finish[0].decode()


def usage(responses: queue.Queue) -> tuple[str, str, int, int, int]:
    """(answer, finish reason, prompt tokens, completion tokens, prompt tokens it went on from
    rather than read) of one whole answer."""
    deltas = []
    while True:
        result, error = responses.get(timeout=RESPONSE_WITHIN_S)
        if error is not None:
            raise error
        deltas.append(result.as_numpy("DELTA")[0].decode("utf-8"))
        if result.as_numpy("FINISH_REASON") is not None:
            return ("".join(deltas), result.as_numpy("FINISH_REASON")[0].decode(),
                    int(result.as_numpy("PROMPT_TOKENS")[0]), int(result.as_numpy("COMPLETION_TOKENS")[0]),
                    int(result.as_numpy("PROMPT_CACHED_TOKENS")[0]))


def answer(responses: queue.Queue) -> tuple[list[str], str]:
    """Every DELTA of one answer, and the finish reason the last response carries."""
    deltas = []
    while True:
        delta, finish_reason = next_response(responses)
        deltas.append(delta)
        if finish_reason is not None:
            return deltas, finish_reason


def metric(mesh, name: str, labels: dict[str, str]) -> float:
    """A chat_lm counter with these labels, from Triton's metrics endpoint."""
    url = f"http://127.0.0.1:{mesh.topo.infra.triton_metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith(name) and labels.items() <= sample.labels.items():
                return sample.value
    return 0.0


def generations(mesh, finish_reason: str) -> float:
    """chat_lm_generations_total for a finish reason."""
    return metric(mesh, "chat_lm_generations", {"finish_reason": finish_reason})


def test_answer_streams_in_several_pieces_before_the_final_response(stream):
    """A long answer (its 40 tokens take a few flush intervals at any speed here; a short one,
    14 tokens, once came in two pieces since tokens made within flush_ms go out together)."""
    client, responses = stream
    ask(client, STORY, max_tokens=40, temperature=0)
    deltas, finish_reason = answer(responses)
    assert finish_reason in ("stop", "length")
    assert len([d for d in deltas[:-1] if d]) >= 3, deltas
    assert "".join(deltas).strip()


def test_each_response_counts_the_tokens_made_so_far_and_the_first_goes_alone(stream):
    """Tokens made within flush_ms of the last response go out together in the next, so a
    response may hold several; each carries the count so far, which callers report if the
    answer is cut short."""
    client, responses = stream
    ask(client, STORY, max_tokens=40)
    counts = []
    while True:
        result, error = responses.get(timeout=RESPONSE_WITHIN_S)
        assert error is None, error
        counts.append(int(result.as_numpy("COMPLETION_TOKENS")[0]))
        if result.as_numpy("FINISH_REASON") is not None:
            break
    assert counts[0] == 1 and counts == sorted(counts) and 1 < counts[-1] <= 40, counts


def test_small_max_tokens_ends_with_length(stream):
    client, responses = stream
    ask(client, STORY, max_tokens=5)
    deltas, finish_reason = answer(responses)
    assert finish_reason == "length"
    assert 1 <= len([d for d in deltas if d]) <= 5


def test_stop_sequence_ends_the_answer_before_it(stream):
    client, responses = stream
    ask(client, STORY, max_tokens=200, stop=[" "])
    deltas, finish_reason = answer(responses)
    assert finish_reason == "stop"
    assert " " not in "".join(deltas).strip()


def test_a_full_length_answer_runs_past_its_end_to_max_tokens(stream):
    """FULL_LENGTH (what bench/chat_latency.py's full-length rows ask for): the end-of-text token
    does not end the answer."""
    client, responses = stream
    asked = [{"role": "user", "content": "Answer with one word: is the sky blue?"}]
    ask(client, asked, max_tokens=32, temperature=0)
    _, finish_reason, _, made, _ = usage(responses)
    assert finish_reason == "stop" and made < 32
    ask(client, asked, max_tokens=32, temperature=0, full_length=True)
    _, finish_reason, _, made, _ = usage(responses)
    assert finish_reason == "length" and made == 32


def test_cancel_stops_the_generation(mesh, stream):
    client, responses = stream
    cancelled_before = generations(mesh, "cancelled")
    ask(client, STORY, max_tokens=1000)
    for _ in range(3):                       # the generation is under way
        _, finish_reason = next_response(responses)
        assert finish_reason is None
    client.stop_stream(cancel_requests=True)
    # The model counts a generation as "cancelled" only when it saw the cancel and ended the
    # generation early (running to the end counts it as stop or length instead).
    deadline = time.monotonic() + 30
    while generations(mesh, "cancelled") <= cancelled_before:
        assert time.monotonic() < deadline, "the generation did not stop after the cancel"
        time.sleep(0.2)


def test_malformed_messages_are_rejected_naming_the_input(stream):
    client, responses = stream
    ask(client, None, max_tokens=5, messages_json="not json")
    with pytest.raises(grpcclient.InferenceServerException, match="MESSAGES"):
        next_response(responses)
    ask(client, STORY, max_tokens=5, cited_json='{"titles": [""]}')
    with pytest.raises(grpcclient.InferenceServerException, match="CITED"):
        next_response(responses)


def test_concurrent_answers_each_get_their_own_tokens_and_start_together(streams):
    """Six answers at once (fewer than the slots): none carries another's word, nearly all repeat
    their own, and every one has its first token before any has finished (they decode together)."""
    opened = {word: streams() for word in WORDS}
    for word, (client, _) in opened.items():
        ask(client, [{"role": "user", "content": f"Repeat this word five times: {word}"}],
            max_tokens=16, temperature=0.0)
    first_at, done_at, answers = {}, {}, {}
    pending = dict(opened)
    deadline = time.monotonic() + RESPONSE_WITHIN_S
    while pending:
        assert time.monotonic() < deadline, f"no answer for {sorted(pending)}"
        for word, (_, responses) in list(pending.items()):
            try:
                result, error = responses.get(timeout=0.01)
            except queue.Empty:
                continue
            assert error is None, error
            first_at.setdefault(word, time.monotonic())
            answers[word] = answers.get(word, "") + result.as_numpy("DELTA")[0].decode()
            if result.as_numpy("FINISH_REASON") is not None:
                done_at[word] = time.monotonic()
                del pending[word]
    for word, text in answers.items():     # no answer carries another's word
        assert not [other for other in WORDS if other != word and other in text.lower()], (word, text)
    # Greedy decoding in a batch is not bit-for-bit the same as alone (the sums run in another
    # order), so an answer may drift from its word ("Zepple."); most keep it.
    assert sum(word in text.lower() for word, text in answers.items()) >= len(WORDS) - 2, answers
    assert max(first_at.values()) < min(done_at.values())


def test_usage_counts_the_engines_tokens(stream):
    client, responses = stream
    ask(client, STORY, max_tokens=7)
    text, finish_reason, prompt_tokens, completion_tokens, _ = usage(responses)
    assert finish_reason == "length" and completion_tokens == 7
    assert 20 < prompt_tokens < 100 and text.strip()


def test_a_conversations_next_turn_reports_the_prompt_it_went_on_from(stream):
    """PROMPT_CACHED_TOKENS: the prompt tokens the engine had read for an earlier prompt (the
    conversation so far) and did not read again; a greedy request is read whole, by design."""
    client, responses = stream
    first = [{"role": "system", "content": f"You tell stories; this is story {uuid.uuid4()}."},
             {"role": "user", "content": "Tell me about a lighthouse."}]
    ask(client, first, max_tokens=8)
    text, _, first_prompt, _, first_cached = usage(responses)
    follow_up = [*first, {"role": "assistant", "content": text}, {"role": "user", "content": "And its keeper?"}]
    ask(client, follow_up, max_tokens=4)
    _, _, prompt, _, cached = usage(responses)
    assert first_cached < first_prompt <= cached and prompt - cached < first_prompt
    ask(client, follow_up, max_tokens=4, temperature=0)
    assert usage(responses)[-1] == 0


def test_a_conversation_longer_than_the_context_is_trimmed_to_fit(stream):
    """Which turns stay is tested on the engine itself (tests/unit/models/test_chat_engine.py)."""
    earlier = [{"role": "user" if i % 2 == 0 else "assistant", "content": "lighthouse " * 400}
               for i in range(10)]        # about 4,000 tokens: twice a slot's context
    messages = [{"role": "system", "content": "You are brief."}, *earlier,
                {"role": "user", "content": "Repeat this word five times: zebra"}]
    client, responses = stream
    ask(client, messages, max_tokens=16, temperature=0.0)
    text, finish_reason, prompt_tokens, *_ = usage(responses)
    assert finish_reason in ("stop", "length") and text
    assert 1000 < prompt_tokens <= 2048 - 16             # the oldest turns went, some stayed


def fill(mesh, streams) -> tuple[list, str]:
    """Every slot generating and the queue full, proven by one more request being refused: the
    streams holding the model, and the refusal's message. Stopping the streams frees it."""
    config = urllib.request.urlopen(
        f"http://127.0.0.1:{mesh.topo.infra.triton_http_port}/v2/models/{MODEL}/config", timeout=5)
    parameters = json.loads(config.read())["parameters"]
    capacity = int(parameters["slots"]["string_value"]) + int(parameters["queue"]["string_value"])
    opened = [streams() for _ in range(capacity + 1)]
    for client, _ in opened:
        ask(client, STORY, max_tokens=1000)
    deadline = time.monotonic() + 30
    while True:        # the one past capacity hears back at once; the rest generate or wait
        assert time.monotonic() < deadline, "no request was refused"
        for _, responses in opened:
            while not responses.empty():
                try:
                    next_response(responses)
                except grpcclient.InferenceServerException as error:
                    return opened, str(error)
        time.sleep(0.05)


def test_a_full_queue_refuses_at_once_with_busy(mesh, streams):
    """Every slot generating and the queue full: the next request is refused at once, never queued
    behind them; cancelling them all frees the model."""
    refused_before = refused(mesh)
    opened, refusal = fill(mesh, streams)
    assert "chat model busy" in refusal
    assert refused(mesh) > refused_before
    for client, _ in opened:
        client.stop_stream(cancel_requests=True)
    client, responses = streams()
    ask(client, [{"role": "user", "content": "Repeat this word five times: piano"}], max_tokens=8,
        temperature=0.0)
    assert "piano" in "".join(answer(responses)[0]).lower()   # cancels freed the slots and queue


def refused(mesh) -> float:
    return metric(mesh, "chat_lm_refused", {})
