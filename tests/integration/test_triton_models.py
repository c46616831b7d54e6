"""The Triton model repository served by the real Triton from the nvidia-pytriton wheel."""
from __future__ import annotations

import os
import re
import subprocess
import threading
import time
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

import aimesh.topology
import aimesh.triton
from tests import ports

MODEL = "text_embedding"
READY_WITHIN_S = 90


@pytest.fixture(scope="module")
def infra():
    return aimesh.topology.load(port_offset=ports.TRITON_ONLY).infra


@pytest.fixture(scope="module")
def triton(infra, tmp_path_factory):
    state_dir = tmp_path_factory.mktemp("state")
    component = aimesh.triton.component(infra, state_dir)
    log_path = state_dir / "triton.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(component.argv, env={**os.environ, **component.env},
                                   cwd=component.cwd, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + READY_WITHIN_S
        while not component.healthy():
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"Triton not ready (exit code {process.poll()}):\n"
                            + log_path.read_text()[-4000:])
            time.sleep(0.2)
        yield process
    finally:
        process.terminate()
        try:
            process.wait(component.stop_timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
    assert process.returncode == 0, f"Triton did not stop cleanly on SIGTERM ({process.returncode})"


@pytest.fixture(scope="module")
def client(triton, infra):
    with grpcclient.InferenceServerClient(f"127.0.0.1:{infra.triton_grpc_port}") as client:
        yield client


def text_input(texts: list[str]) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput("TEXT", [len(texts), 1], "BYTES")
    tensor.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=object).reshape(-1, 1))
    return tensor


def embed(client, texts: list[str]) -> np.ndarray:
    result = client.infer(MODEL, [text_input(texts)], client_timeout=10,
                          outputs=[grpcclient.InferRequestedOutput("EMBEDDING")])
    return result.as_numpy("EMBEDDING")


def model_counters(infra) -> tuple[float, float]:
    """(inferences, executions) for the model, from Triton's Prometheus metrics."""
    url = f"http://127.0.0.1:{infra.triton_metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()

    def counter(name: str) -> float:
        match = re.search(rf'^{name}\{{[^}}]*model="{MODEL}"[^}}]*\}} (\S+)$', text, re.MULTILINE)
        assert match, f"{name} for {MODEL} not in metrics"
        return float(match.group(1))

    return counter("nv_inference_count"), counter("nv_inference_exec_count")


def test_each_row_becomes_a_unit_384_fp32_vector(client):
    vectors = embed(client, ["hello world", "Semantic search over products", "a"])
    assert vectors.shape == (3, 384)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)


def test_text_without_words_embeds_to_zeros(client):
    assert not embed(client, ["", "  ?! "]).any()


def test_same_text_gives_identical_vector(client):
    first = embed(client, ["The quick brown fox"])
    again = embed(client, ["the quick brown fox", "something else"])[:1]  # case-folded, other batch
    assert np.array_equal(first, again)


def test_texts_sharing_words_score_higher_than_unrelated_texts(client):
    cat, paraphrase, unrelated = embed(client, [
        "the cat sat on the mat",
        "a cat sat on a mat",
        "quarterly revenue grew in europe",
    ])
    assert float(cat @ paraphrase) > float(cat @ unrelated) + 0.2


def test_concurrent_single_row_requests_are_batched(client, infra):
    inferences_before, executions_before = model_counters(infra)
    requests = 256
    done, errors, lock = threading.Semaphore(0), [], threading.Lock()

    def on_result(result, error):
        if error is not None:
            with lock:
                errors.append(error)
        done.release()

    # 64 in flight at a time: the dynamic batcher sees a queue and should merge it.
    in_flight = threading.BoundedSemaphore(64)

    def release(result, error):
        in_flight.release()
        on_result(result, error)

    for i in range(requests):
        in_flight.acquire()
        client.async_infer(MODEL, [text_input([f"concurrent request number {i}"])],
                           callback=release, client_timeout=30)
    for _ in range(requests):
        assert done.acquire(timeout=30), "a request got no answer"
    assert not errors, errors[:3]

    # Counters are updated as responses complete; wait (bounded) until all are counted.
    deadline = time.monotonic() + 10
    while True:
        inferences, executions = model_counters(infra)
        if inferences - inferences_before >= requests or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert inferences - inferences_before == requests
    assert executions - executions_before < (inferences - inferences_before) / 2
