"""The Triton model repository served by the real Triton from the nvidia-pytriton wheel."""
from __future__ import annotations

import functools
import json
import os
import subprocess
import threading
import time

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

import aimesh.models
import aimesh.topology
import aimesh.triton
from tests import ports

MODEL = "text_embedding"
READY_WITHIN_S = 90
STOP_WITHIN_S = 15


@pytest.fixture(scope="module")
def infra():
    return aimesh.topology.load(port_offset=ports.TRITON_ONLY).infra


class TritonServer:
    """The real Triton the runner would start (same argv, environment, assembled repository)."""

    def __init__(self, infra, state_dir):
        self.infra, self.state_dir = infra, state_dir
        self.log_path = state_dir / "triton.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        component = aimesh.triton.component(self.infra, self.state_dir)   # assembles the repository
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(component.argv, env={**os.environ, **component.env},
                                            cwd=component.cwd, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + READY_WITHIN_S
        while not component.healthy():
            if self.process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"Triton not ready (exit code {self.process.poll()}):\n"
                            + self.log_path.read_text()[-4000:])
            time.sleep(0.2)

    def stop(self) -> int:
        self.process.terminate()
        try:
            return self.process.wait(STOP_WITHIN_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(5)


@pytest.fixture(scope="module")
def triton(infra, tmp_path_factory):
    aimesh.models.build()     # what `aimesh up` does first; skips what is current
    server = TritonServer(infra, tmp_path_factory.mktemp("state"))
    server.start()
    try:
        yield server
    finally:
        returncode = server.stop()
    assert returncode == 0, f"Triton did not stop cleanly on SIGTERM ({returncode})"


@pytest.fixture(scope="module")
def client(triton, infra):
    with grpcclient.InferenceServerClient(f"127.0.0.1:{infra.triton_grpc_port}") as client:
        yield client


def text_input(texts: list[str]) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput("TEXT", [len(texts), 1], "BYTES")
    tensor.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=object).reshape(-1, 1))
    return tensor


def embed(client, texts: list[str]) -> np.ndarray:
    result = client.infer(MODEL, [text_input(texts)], client_timeout=60,   # 2 busy cores
                          outputs=[grpcclient.InferRequestedOutput("EMBEDDING")])
    return result.as_numpy("EMBEDDING")


def test_each_row_becomes_a_unit_384_fp32_vector(client):
    vectors = embed(client, ["hello world", "Semantic search over products", "a"])
    assert vectors.shape == (3, 384)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)


def counts(infra) -> tuple[float, float]:
    return aimesh.triton.inference_counts(infra.triton_metrics_port, MODEL)


def reference() -> tuple[list[str], np.ndarray]:
    """The fixed sentences and sentence-transformers' vectors for them, stored by the build."""
    stored = json.loads((aimesh.models.output(MODEL) / "reference.json").read_text())
    return stored["sentences"], np.array(stored["embeddings"], dtype=np.float32)


def test_embeddings_match_sentence_transformers(client):
    sentences, expected = reference()
    assert len(sentences) >= 50
    served = embed(client, sentences)     # one batch: short, long (truncated), empty, non-ASCII
    cosines = np.sum(served * expected, axis=1)
    worst = int(np.argmin(cosines))
    assert cosines[worst] >= 0.999, f"cosine {cosines[worst]:.6f} for {sentences[worst]!r}"


def test_a_text_embeds_the_same_alone_and_in_a_padded_batch(client):
    sentences, _ = reference()
    alone = embed(client, ["A cat sat on the mat."])[0]
    batched = embed(client, ["A cat sat on the mat.", sentences[-1]])[0]   # padded to the long one
    assert float(alone @ batched) >= 0.9999


def test_meaning_counts_not_shared_words(client):
    question, paraphrase, same_words = embed(client, [
        "How do I reset my password?",
        "I forgot my login credentials and cannot sign in.",
        "How do I reset my router to factory settings?",
    ])
    assert float(question @ paraphrase) > float(question @ same_words)


def test_texts_sharing_meaning_score_higher_than_unrelated_texts(client):
    cat, paraphrase, unrelated = embed(client, [
        "the cat sat on the mat",
        "a cat was sitting on a rug",
        "quarterly revenue grew in europe",
    ])
    assert float(cat @ paraphrase) > float(cat @ unrelated) + 0.2


def test_concurrent_single_row_requests_are_batched_and_each_gets_its_own_row(client, infra):
    sentences, expected = reference()
    inferences_before, executions_before = counts(infra)
    requests = 256
    done, errors, answers, lock = threading.Semaphore(0), [], {}, threading.Lock()
    # 64 in flight at a time: the dynamic batcher sees a queue and should merge it.
    in_flight = threading.BoundedSemaphore(64)

    def on_result(i, result, error):
        in_flight.release()
        with lock:
            if error is not None:
                errors.append(error)
            else:
                answers[i] = result.as_numpy("EMBEDDING")[0]
        done.release()

    for i in range(requests):
        in_flight.acquire()
        client.async_infer(MODEL, [text_input([sentences[i % len(sentences)]])],
                           callback=functools.partial(on_result, i), client_timeout=30)
    for _ in range(requests):
        assert done.acquire(timeout=30), "a request got no answer"
    assert not errors, errors[:3]
    # Rows merged from many requests went back to the request that sent them.
    worst = min(float(answers[i] @ expected[i % len(sentences)]) for i in range(requests))
    assert worst >= 0.999

    # Counters are updated as responses complete; wait (bounded) until all are counted.
    deadline = time.monotonic() + 10
    while True:
        inferences, executions = counts(infra)
        if inferences - inferences_before >= requests or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert inferences - inferences_before == requests
    assert executions - executions_before < (inferences - inferences_before) / 2


def test_a_restarted_triton_serves_the_same_model(triton, client):
    sentences, _ = reference()
    before = embed(client, sentences[:8])
    assert triton.stop() == 0
    triton.start()                        # the repository is put together again, from the cache
    with grpcclient.InferenceServerClient(f"127.0.0.1:{triton.infra.triton_grpc_port}") as again:
        np.testing.assert_allclose(embed(again, sentences[:8]), before, atol=1e-6)
