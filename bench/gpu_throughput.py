"""Throughput through Triton against the same model called in-process, on one device (a GPU where
there is one, else the CPU): the text embedding (all-MiniLM-L6-v2's architecture) and the
recommender (versions 1 and 2).

Prints one table: sentences/s (embedding) or requests/s (recommender) for each way of calling, the
best in-process figure, and Triton's ratio to it, with the device and the batch sizes. Asserts none.

The embedding is fed token ids (INPUT_IDS, ATTENTION_MASK), not text: on the GPU machine numpy is
2.x, which crashes string tensors in this Triton's python backend. So this benchmark serves a model
of its own, text_embedding_ids (bench/helpers/text_embedding_ids.py), in a Triton model repository it puts
together in a temporary folder: the served text_embedding's model.py does the work (torch fp16
from the TorchScript copy on a CUDA device, onnxruntime on the CPU), and the in-process side calls
that same code. The recommender is the served one (numpy on the CPU in both; it has no GPU path).

Weights: the built artifacts (`aimesh models build`) where they are current, else random weights
of the real architecture (`--random-weights`; needs torch and transformers), made by the build's
own code (text_embedding.build_random: the ONNX graph and the fp16 TorchScript copy traced on the
CPU): the GPU machine gets only the git tree, not the model cache.

Also, on a GPU: how far Triton's GPU vectors are from onnxruntime's on the CPU (worst cosine over
the input rows), the GPU memory in use, and whether the recommender's scoring pays on the GPU
(bench/helpers/torch_ranker.py against ranking.Ranker, one request and 64 at once).

Here (the project's environment; ports shifted by AIMESH_PORT_OFFSET, default 2000):

  bin/aimesh bench gpu_throughput

On the GPU machine (Python 3.12, a CUDA torch, numpy 2, no network, not our environment): once,
here, `bench/device_wheels.sh` puts the wheels it lacks (Triton from nvidia-pytriton, trimmed;
tritonclient, grpcio, protobuf, python-rapidjson: 49 MB) into .device-wheels/, ignored by git;
then one device call with `carry: [".device-wheels"]` runs:

  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site \
    .device-wheels/*.whl && PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site:$PWD \
    python3 bench/gpu_throughput.py 2>&1 | tee $OUT/gpu_throughput.log

bench/README.md says what the wheels are and why.
"""
from __future__ import annotations

import argparse
import ctypes.util
import importlib.util
import math
import os
import platform
import re
import sys
import sysconfig
import tempfile
import time
import types
from pathlib import Path

import numpy as np
from helpers import lone_triton
from helpers.gpu_models import (
    EMBEDDING,
    RECOMMENDER,
    RECOMMENDER_VERSIONS,
    random_recommender,
    repository,
    served_max_batch,
    token_rows,
    user_histories,
)

from aimesh import models, topology, triton
from aimesh.models.recommender import ranking_module
from aimesh.models.text_embedding import build_random

BENCH = Path(__file__).resolve().parent
K = 10
MEASURE_S = 5.0             # at most, per in-process batch size

# --- the device ------------------------------------------------------------------------------

def cuda_name(wanted: str) -> str | None:
    """The CUDA device's name if this run uses one (torch sees it and --device allows it)."""
    if wanted == "cpu":
        return None
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    if wanted == "cuda":
        raise SystemExit("--device cuda: torch sees no CUDA device")
    return None


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} cores"
    return f"{platform.processor() or 'CPU'}, {os.cpu_count()} cores"


def libpython_missing() -> str | None:
    """A likely reason for Triton's python backend to fail here, if one shows in advance: its
    stub links this interpreter's shared libpython, which some Python builds do not have."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    name = sysconfig.get_config_var("INSTSONAME") or f"libpython{version}.so.1.0"
    places = [sysconfig.get_config_var("LIBDIR"), *os.environ.get("LD_LIBRARY_PATH", "").split(":"),
              "/usr/lib/x86_64-linux-gnu", "/usr/lib", "/usr/local/lib"]
    if any(p and (Path(p) / name).exists() for p in places) or ctypes.util.find_library(
            f"python{version}"):
        return None
    return f"{name} is not in {sysconfig.get_config_var('LIBDIR')} nor the usual places"


# --- in-process ------------------------------------------------------------------------------

def served_module(version: Path):
    """The served model.py (the copy in the benchmark's repository, so its `artifact` is there).
    It imports Triton's triton_python_backend_utils, which exists only inside Triton; the engine
    and embed never use it, so a stand-in lets it load here."""
    sys.modules.setdefault("triton_python_backend_utils", types.ModuleType("triton_python_backend_utils"))
    spec = importlib.util.spec_from_file_location("served_text_embedding", version / "served.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def embedding_model(version: Path, on_gpu: bool, ids, mask):
    """The served model's engine and chunking, in this process; checked on a few rows."""
    served = served_module(version)
    model = served.TritonPythonModel()
    args = {"model_instance_kind": "GPU" if on_gpu else "CPU", "model_instance_device_id": "0"}
    model.encode = served.encoder(args)   # falls back to onnxruntime if torch fails on the GPU
    if on_gpu and type(model.encode).__name__ != "TorchEncoder":
        print("FINDING: the served model does not use torch on this GPU (its reason is above)")
    model.embed(ids[:8], mask[:8])
    return model


def worst_cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.min(np.sum(a * b, axis=1) /
                        (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))))


def gpu_memory() -> str:
    """GPU memory in use, the whole device's and per process, as the driver sees it."""
    import subprocess

    def query(*args: str) -> str:
        try:
            lines = subprocess.run(["nvidia-smi", *args, "--format=csv,noheader"], capture_output=True,
                                   text=True, timeout=30).stdout.strip().splitlines()
        except (OSError, subprocess.SubprocessError) as error:
            return f"nvidia-smi failed: {error}"
        return "; ".join(line.strip() for line in lines) or "none listed"

    return (f"device {query('--query-gpu=memory.used,memory.total')}; processes "
            f"{query('--query-compute-apps=pid,process_name,used_memory')}")


def in_process_embedding(model, ids, mask, batch_size: int, sentences: int) -> float:
    """Sentences/s at this batch size, rows cycled from ids: `sentences` of them, or as many as
    MEASURE_S allows (batch 1 on a GPU is slow enough to eat the device's time)."""
    order = np.arange(max(sentences, batch_size)) % len(ids)
    model.embed(ids[order[:batch_size]], mask[order[:batch_size]])   # warm this shape
    done, started = 0, time.perf_counter()
    while done < len(order) and time.perf_counter() - started < MEASURE_S:
        rows = order[done:done + batch_size]
        model.embed(ids[rows], mask[rows])
        done += len(rows)
    return done / (time.perf_counter() - started)


def in_process_recommender(artifact: Path, version: str, users: list[list[int]], requests: int) -> float:
    """Requests/s of ranking.Ranker, one request after another, as one Triton instance runs them."""
    ranker = ranking_module().Ranker.load(artifact / version / "recommender.npz")
    for history in users[:20]:
        ranker.top_k(history, K)
    started = time.perf_counter()
    for i in range(requests):
        ranker.top_k(users[i % len(users)], K)
    return requests / (time.perf_counter() - started)


def recommender_on_gpu(table: Table, artifact: Path, version: str, users: list[list[int]],
                       requests: int, numpy_rate: float) -> None:
    """The same scoring in torch on the GPU: one request at a time, and 64 at once (what a
    dynamic batcher of 64 would hand over); agreement with numpy's top-k sets."""
    import torch
    from helpers.torch_ranker import TorchRanker

    ranker = ranking_module().Ranker.load(artifact / version / "recommender.npz")
    gpu = TorchRanker(ranker, "cuda")
    got = gpu.top_k(users, K)
    same = np.mean([set(got[i]) == set(ranker.top_k(u, K)[0]) for i, u in enumerate(users)])
    table.notes.append(f"recommender v{version} torch on the GPU vs numpy: same top-{K} set for "
                       f"{same:.1%} of {len(users)} histories (the rest: ties at the cut)")
    for batch in (1, 64):
        groups = [[users[(i + j) % len(users)] for j in range(batch)]
                  for i in range(0, requests, batch)]
        for group in groups[:10]:
            gpu.top_k(group, K)
        torch.cuda.synchronize()
        started = time.perf_counter()
        for group in groups:
            gpu.top_k(group, K)          # .cpu() inside waits for the device
        rate = len(groups) * batch / (time.perf_counter() - started)
        table.add(f"recommender v{version}", "in-process torch (GPU)", f"{batch} at once", rate,
                  f"{rate / numpy_rate:.2f}x numpy one at a time")


# --- through Triton --------------------------------------------------------------------------

def embedding_through_triton(client, ids, mask, concurrency: int, rows_per_request: int,
                             requests: int) -> float:
    """Sentences/s with `concurrency` requests of `rows_per_request` rows each in flight."""
    import tritonclient.grpc as grpcclient
    from helpers import loadgen

    payloads = []                    # made once: the client's own numpy work is not measured
    for first in range(0, len(ids), rows_per_request):
        rows = np.arange(first, first + rows_per_request) % len(ids)
        tensors = []
        for name, values in (("INPUT_IDS", ids[rows]), ("ATTENTION_MASK", mask[rows])):
            tensor = grpcclient.InferInput(name, list(values.shape), "INT64")
            tensor.set_data_from_numpy(values)
            tensors.append(tensor)
        payloads.append(tensors)
    return rows_per_request * loadgen.run(requests, concurrency, lambda i, done: client.async_infer(
        EMBEDDING, payloads[i % len(payloads)], callback=lambda result, error: done(error),
        client_timeout=60))[1]


def embed_through_triton(client, ids, mask) -> np.ndarray:
    import tritonclient.grpc as grpcclient
    tensors = []
    for name, values in (("INPUT_IDS", ids), ("ATTENTION_MASK", mask)):
        tensor = grpcclient.InferInput(name, list(values.shape), "INT64")
        tensor.set_data_from_numpy(values)
        tensors.append(tensor)
    return client.infer(EMBEDDING, tensors, client_timeout=60).as_numpy("EMBEDDING")


def reference(repo: Path, ids, mask) -> np.ndarray:
    """onnxruntime's vectors on the CPU: the served model's OnnxEncoder on the same artifact."""
    served = served_module(repo / EMBEDDING / "1")
    model = served.TritonPythonModel()
    model.encode = served.OnnxEncoder(None)
    return model.embed(ids, mask)


def instance_device(log: Path) -> str:
    """Which engine serves the embedding in Triton, and where: the line its model.py logs."""
    lines = re.findall(r"text_embedding: (\w+ on (?:GPU|CPU)\b.*)", log.read_text(errors="replace"))
    return lines[-1].strip() if lines else "engine not logged"


# --- main ------------------------------------------------------------------------------------

def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="auto: CUDA where torch sees a GPU, else the CPU")
    weights = parser.add_mutually_exclusive_group()
    weights.add_argument("--random-weights", action="store_true", default=None,
                         help="random weights of the real architectures (default when the built "
                              "artifacts are missing)")
    weights.add_argument("--built-weights", dest="random_weights", action="store_false",
                         help="the artifacts of `aimesh models build` (default when current)")
    parser.add_argument("--sentences", type=int, help="per measurement: each in-process batch "
                        f"size (at most {MEASURE_S:.0f} s each) and each Triton setting "
                        "(default: 20000 on a GPU, 1500 on the CPU)")
    parser.add_argument("--batch-sizes", default="1,8,16,32,64,128,256")
    parser.add_argument("--concurrency", default="1,64,256",
                        help="requests in flight to Triton's embedding model")
    parser.add_argument("--rows-per-request", default="1,32")
    parser.add_argument("--max-batch", type=int, default=served_max_batch(),
                        help="Triton's max_batch_size for the embedding (default: the served one)")
    parser.add_argument("--recommender-requests", type=int, default=2000)
    parser.add_argument("--in-process-only", action="store_true", help="do not start Triton")
    return parser.parse_args()


def main() -> None:
    options = parse()
    gpu = cuda_name(options.device)
    on_gpu = gpu is not None
    built = models.is_current("text_embedding") and models.is_current("recommender")
    random_weights = not built if options.random_weights is None else options.random_weights
    if not random_weights and not built:
        raise SystemExit("--built-weights: run `aimesh models build` first")
    sentences = options.sentences or (20000 if on_gpu else 1500)
    rng = np.random.default_rng(0)

    if on_gpu:
        import torch
        device = f"{gpu} (CUDA, torch {torch.__version__}, fp16), host {cpu_name()}"
    else:
        device = f"CPU: {cpu_name()} (onnxruntime)"
    print(f"device: {device}\nweights: {'random, real architectures' if random_weights else 'built'};"
          f" numpy {np.__version__}, Python {platform.python_version()}")

    with tempfile.TemporaryDirectory(prefix="aimesh-gpu-bench-") as temp:
        work = Path(temp)
        if random_weights:
            embedding_artifact, recommender_artifact = work / "text_embedding", work / "recommender"
            embedding_artifact.mkdir()
            build_random(embedding_artifact)
            random_recommender(recommender_artifact)
        else:
            embedding_artifact = models.output("text_embedding")
            recommender_artifact = models.output("recommender")
        repo = repository(work, embedding_artifact, recommender_artifact, on_gpu, options.max_batch)

        ids, mask = token_rows(embedding_artifact, not random_weights, rng)
        users = user_histories(not random_weights, rng)
        print(f"embedding inputs: {len(ids)} distinct rows of {ids.shape[1]} token ids "
              f"({mask.sum(axis=1).mean():.1f} real on average); recommender: {len(users)} "
              f"histories, K={K}\n")

        table = Table()
        best = None                 # in-process sentences/s at the best batch size
        try:
            model = embedding_model(repo / EMBEDDING / "1", on_gpu, ids, mask)
            engine = type(model.encode).__name__
            for batch_size in ints(options.batch_sizes):
                table.add("text_embedding", f"in-process {engine}", f"batch {batch_size}",
                          in_process_embedding(model, ids, mask, batch_size, sentences))
            best = max(row[3] for row in table.rows)
            if on_gpu:
                import torch
                table.notes.append(f"in-process {engine} vs onnxruntime (CPU): worst cosine "
                                   f"{worst_cosine(model.embed(ids, mask), reference(repo, ids, mask)):.7f}"
                                   f" over {len(ids)} rows; torch's peak GPU memory "
                                   f"{torch.cuda.max_memory_allocated() / 2**20:.0f} MiB")
            del model
        except Exception as error:                  # noqa: BLE001 (the recommender still runs)
            table.failed("text_embedding in-process", error)
        recommender_best = {}
        for version in RECOMMENDER_VERSIONS:
            recommender_best[version] = in_process_recommender(
                recommender_artifact, version, users, options.recommender_requests)
            table.add(f"recommender v{version}", "in-process Ranker (numpy)", "1 at a time",
                      recommender_best[version])
            if on_gpu:
                try:
                    recommender_on_gpu(table, recommender_artifact, version, users,
                                       options.recommender_requests, recommender_best[version])
                except Exception as error:          # noqa: BLE001 (the rest still runs)
                    table.failed(f"recommender v{version} on the GPU", error)

        if options.in_process_only:
            table.notes.append("Triton side not measured: --in-process-only")
        else:
            if libpython_missing():               # tried all the same: the check may be wrong
                table.notes.append(f"warning: {libpython_missing()}; Triton may fail to start")
            try:
                through_triton(table, repo, ids, mask, users, options, sentences, best,
                               recommender_best)
            except Exception as error:              # noqa: BLE001 (the in-process figures stand)
                table.failed("Triton", error)

    table.summary(best)


def through_triton(table: Table, repo: Path, ids, mask, users, options, sentences: int,
                   best: float | None, recommender_best: dict[str, float]) -> None:
    """Both models through one Triton of the benchmark's own (the embedding only where it ran
    in-process: there is nothing to compare with otherwise)."""
    import recommender_latency

    infra = topology.load_infra(port_offset=int(os.environ.get("AIMESH_PORT_OFFSET", "2000")))
    # The served recommender hands Triton numpy arrays, which this Triton's python backend (built
    # for numpy 1) reads wrong under numpy 2: the project's environment pins numpy 1.
    recommender = int(np.__version__.split(".")[0]) < 2
    if not recommender:
        table.notes.append(f"recommender through Triton not measured: numpy {np.__version__} here")
    served = (EMBEDDING, RECOMMENDER) if recommender else (EMBEDDING,)
    log: list[Path] = []
    with lone_triton.serving(served, infra, repository=repo, log=log) as client:
        where = instance_device(log[0])
        if best is not None:
            embedding_through_triton(client, ids, mask, 64, 1, 500)                # warm up
            vectors = np.concatenate([embed_through_triton(client, ids[i:i + 1], mask[i:i + 1])
                                      for i in range(len(ids))])
            table.notes.append(f"Triton ({where}) vs onnxruntime (CPU): worst cosine "
                               f"{worst_cosine(vectors, reference(repo, ids, mask)):.7f} over "
                               f"{len(ids)} rows, one a request")
        for concurrency in ints(options.concurrency) if best is not None else ():
            for per_request in ints(options.rows_per_request):
                before = triton.inference_counts(infra.triton_metrics_port, EMBEDDING)
                requests = max(sentences // per_request, concurrency * 4)
                if concurrency == 1:      # one at a time: a few seconds say enough
                    requests = min(requests, 2000)
                rate = embedding_through_triton(client, ids, mask, concurrency, per_request, requests)
                after = triton.inference_counts(infra.triton_metrics_port, EMBEDDING)
                inferences, executions = (a - b for a, b in zip(after, before, strict=True))
                batch = inferences / executions
                table.add("text_embedding", f"Triton ({where})",
                          f"conc {concurrency}, {per_request}/req, mean batch {batch:.0f}", rate,
                          f"{rate / best:.0%} of best, {table.of_in_process(rate, batch)}")
        if "GPU" in where:
            table.notes.append(f"GPU memory with Triton serving: {gpu_memory()}")
        for version in RECOMMENDER_VERSIONS if recommender else ():
            recommender_latency.latencies(client, version, 8, 200, users)          # warm up
            for concurrency in (1, 32):
                rate = recommender_latency.latencies(client, version, concurrency,
                                                     options.recommender_requests, users)[1]
                table.add(f"recommender v{version}", "Triton (CPU)", f"conc {concurrency}", rate,
                          f"{rate / recommender_best[version]:.0%} of in-process")


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",")]


class Table:
    """The figures: each printed as it is measured (a run cut short still shows them), then all
    together with the notes."""

    HEADER = f"{'model':<17} {'called':<34} {'batch / load':<36} {'per second':>13}  ratio"

    def __init__(self):
        self.rows: list[tuple[str, str, str, float, str]] = []
        self.notes: list[str] = []
        print(self.HEADER)

    def add(self, model: str, called: str, load: str, rate: float, ratio: str = "") -> None:
        self.rows.append((model, called, load, rate, ratio))
        print(self.line(*self.rows[-1]), flush=True)

    def of_in_process(self, rate: float, batch: float) -> str:
        """`rate` against in-process at the measured batch size nearest `batch` (by ratio)."""
        sizes = {int(load.split()[1]): r for model, called, load, r, _ in self.rows
                 if model == "text_embedding" and called.startswith("in-process")}
        if not sizes:
            return "no in-process row"
        size = min(sizes, key=lambda size: abs(math.log(size / max(batch, 1))))
        return f"{rate / sizes[size]:.0%} of in-process batch {size}"

    def failed(self, what: str, error: Exception) -> None:
        self.notes.append(f"{what} failed: {type(error).__name__}: {str(error).strip()[-2000:]}")
        print(self.notes[-1], flush=True)

    @staticmethod
    def line(model: str, called: str, load: str, rate: float, ratio: str) -> str:
        unit = "sent/s" if model == "text_embedding" else "req/s"
        return f"{model:<17} {called:<34} {load:<36} {rate:>6.0f} {unit:<6}  {ratio}"

    def summary(self, best: float | None) -> None:
        """All rows; in-process embedding rows get their share of the best batch size."""
        print(f"\n{self.HEADER}")
        for model, called, load, rate, ratio in self.rows:
            if best and model == "text_embedding" and called.startswith("in-process"):
                ratio = "best" if rate == best else f"{rate / best:.0%} of best"
            print(self.line(model, called, load, rate, ratio))
        for note in self.notes:
            print(note)


if __name__ == "__main__":
    main()
