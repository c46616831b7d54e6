"""chat_lm in the mesh's Triton (loaded by `aimesh up`): a decoupled model that streams its answer
and stops generating when the client cancels. Spoken to directly with tritonclient.grpc streams."""
from __future__ import annotations

import json
import queue
import time
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from prometheus_client.parser import text_string_to_metric_families

MODEL = "chat_lm"
RESPONSE_WITHIN_S = 120     # a bound on waiting for one response on a shared, slow machine
STORY = [{"role": "system", "content": "You are a storyteller who writes at great length."},
         {"role": "user", "content": "Tell me a very long story about a lighthouse keeper."}]


@pytest.fixture
def stream(mesh):
    """An open tritonclient gRPC stream to the mesh's Triton, and the queue its responses land in."""
    responses: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{mesh.topo.infra.triton_grpc_port}")
    client.start_stream(callback=lambda result, error: responses.put((result, error)))
    yield client, responses
    client.stop_stream(cancel_requests=True)
    client.close()


def string_input(name: str, text: str) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(name, [1], "BYTES")
    tensor.set_data_from_numpy(np.array([text.encode()], dtype=np.object_))
    return tensor


def ask(client, messages, max_tokens: int, temperature: float = 0.7, stop=None,
        messages_json: str | None = None) -> None:
    max_tokens_input = grpcclient.InferInput("MAX_TOKENS", [1], "INT32")
    max_tokens_input.set_data_from_numpy(np.array([max_tokens], dtype=np.int32))
    temperature_input = grpcclient.InferInput("TEMPERATURE", [1], "FP32")
    temperature_input.set_data_from_numpy(np.array([temperature], dtype=np.float32))
    inputs = [string_input("MESSAGES", messages_json or json.dumps(messages)),
              max_tokens_input, temperature_input]
    if stop is not None:
        inputs.append(string_input("STOP", json.dumps(stop)))
    client.async_stream_infer(MODEL, inputs)


def next_response(responses: queue.Queue):
    result, error = responses.get(timeout=RESPONSE_WITHIN_S)
    if error is not None:
        raise error
    delta = result.as_numpy("DELTA")[0].decode("utf-8")
    finish = result.as_numpy("FINISH_REASON")
    return delta, None if finish is None else finish[0].decode()


def answer(responses: queue.Queue) -> tuple[list[str], str]:
    """Every DELTA of one answer, and the finish reason the last response carries."""
    deltas = []
    while True:
        delta, finish_reason = next_response(responses)
        deltas.append(delta)
        if finish_reason is not None:
            return deltas, finish_reason


def generations(mesh, finish_reason: str) -> float:
    """chat_lm_generations_total for a finish reason, from Triton's metrics endpoint."""
    url = f"http://127.0.0.1:{mesh.topo.infra.triton_metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if (sample.name.startswith("chat_lm_generations")
                    and sample.labels.get("finish_reason") == finish_reason):
                return sample.value
    return 0.0


def test_answer_streams_in_several_pieces_before_the_final_response(stream):
    client, responses = stream
    ask(client, [{"role": "user", "content": "Name three colours of the rainbow."}], max_tokens=40)
    deltas, finish_reason = answer(responses)
    assert finish_reason in ("stop", "length")
    assert len([d for d in deltas[:-1] if d]) >= 3, deltas
    assert "".join(deltas).strip()


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
