"""Chat for many at once: first-token latency and aggregate tokens/s at 1, 4 and 8 concurrent chats,
through the gateway (Ask: Envoy, chat-svc, retrieval, chat_lm in Triton) and with the same engine
in-process (triton_models/chat_lm/1/generation.py, the very code chat_lm runs, with the same
settings read from its config.pbtxt).

Both columns answer the same prompts: the in-process side builds each prompt as chat-svc does
(services/chat/model.py: messages, the CITED grammar, one paragraph) from the same Search results,
with chat-svc's temperature and max_tokens; each engine is asked each question once (a question
about a film of the catalog), after a warm-up that used every slot. Levels alternate between the two sides, so load from
elsewhere on the machine falls on both alike; they never run at the same time.

Two kinds of rows. A burst: `chats` questions sent at once, timed until the last answer ends (the
first-token figures of many people asking together; as answers are one paragraph of 10 to 110
tokens, its last seconds have fewer chats decoding). Sustained: `chats` users each asking their next
question as soon as their answer ends, for SUSTAINED_S seconds (the aggregate tokens/s while that
many chat at once). And full-length answers, the 128 tokens a chat the targets are set for: every
answer runs to MAX_TOKENS (no paragraph stop, the end-of-text token ignored), so 1 and 8 chats
decode alike; the gateway side of these rows runs on a second mesh whose chat-svc asks chat_lm for
full answers (bench/chat_full_length.yaml), alternated with the same in-process. The gateway side
also prints the CPU each token cost per process: outside Triton (chat-svc, Envoy) it is what
carrying the pieces costs, taken from the cores the engine decodes on (the client is this process,
which also holds the in-process engine, so it is left out). Prints figures and asserts none.
Runs its own mesh (bench/topology.yaml: no rate limit or per-user cap reached; each chat is its own
user anyway), then the full-length one, in /tmp/aimesh-bench-state on AIMESH_PORT_OFFSET=2000, and
always brings it down. Run it as bin/aimesh runs the CLI (bench/README.md):

  bin/aimesh bench chat_latency
"""
from __future__ import annotations

import dataclasses
import itertools
import random
import re
import shutil
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
from helpers.common import accounts, machine
from helpers.cpu import CpuMeter

from aimesh import models, paths
from aimesh.chat.v1 import chat_pb2, chat_pb2_grpc
from aimesh.harness import MeshUnderTest
from aimesh.models import chat_lm
from aimesh.search.v1 import search_pb2, search_pb2_grpc
from services.chat.model import ONE_PARAGRAPH, cited, messages
from services.chat.server import RETRIEVED
from services.kit import movielens

sys.path.insert(0, str(paths.TRITON_MODELS / "chat_lm" / "1"))
import generation  # noqa: E402

MAX_TOKENS = 128
LEVELS = (1, 4, 8)
ROUNDS = 2          # each level this many times on each side
# Full-length bursts take 1-7 s, so more rounds cost little: with 2, gateway / in-process at 4 chats
# came out at 81% in a run whose other rows were 91-97%.
FULL_ROUNDS = 4
SUSTAINED_S = 20    # a sustained row: each chat asks its next question as its answer ends, this long
PATH = ("chat", "envoy", "triton")    # CPU a token: what carries the pieces, and the model
# Each engine is asked each question once: chat_lm reuses a cached prompt's prefix (as it should:
# the system prompt is every chat's), so a question asked again would be answered from its
# whole cached prompt, far sooner than a new one. Films of the demo catalog, a fixed sample.
WARM_UP = max(LEVELS)
FULL_LENGTH_TOPOLOGY = paths.ROOT / "bench" / "chat_full_length.yaml"
# by the in-process engine: bursts, full-length rows, and sustained rows (one chat's answer takes
# at least ~0.3 s, so far fewer are asked than this bound)
ASKED = (WARM_UP + (ROUNDS + FULL_ROUNDS) * sum(LEVELS)
         + ROUNDS * (1 + max(LEVELS)) * round(SUSTAINED_S / 0.3))
QUESTIONS = [f"Tell me about {movie.title}." for movie in
             random.Random(20261204).sample(movielens.movies(), ASKED)]


@dataclass
class Stream:
    first_token_s: float     # request sent -> first non-empty piece
    tokens: int              # completion tokens, as the engine counted them


def parameters() -> dict[str, int]:
    """chat_lm's config.pbtxt parameters."""
    config = (paths.TRITON_MODELS / "chat_lm" / "config.pbtxt").read_text()
    return {key: int(value) for key, value in
            re.findall(r'key: "(\w+)" value: \{ string_value: "(-?\d+)" \}', config)}


def engine_settings() -> generation.Settings:
    """The engine's settings as chat_lm's config.pbtxt gives them."""
    found = parameters()
    return generation.Settings(**{field.name: found[field.name]
                                  for field in dataclasses.fields(generation.Settings)
                                  if field.name in found})


def together(work, count: int) -> tuple[list[Stream], float]:
    """Run work(i) on `count` threads at once; their streams and the wall time of all of them."""
    streams: list[Stream] = [None] * count
    started = time.perf_counter()
    threads = [threading.Thread(target=lambda i=i: streams.__setitem__(i, work(i, started)))
               for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return streams, time.perf_counter() - started


def sustained(work, count: int) -> tuple[list[Stream], float]:
    """`count` chats at once, each asking its next question as soon as its answer ends, for
    SUSTAINED_S: their answers and the wall time until the last ended."""
    streams: list[Stream] = []
    started = time.perf_counter()
    until = started + SUSTAINED_S

    def chat(i: int) -> None:
        while time.perf_counter() < until:
            streams.append(work(i, time.perf_counter()))
    threads = [threading.Thread(target=chat, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return streams, time.perf_counter() - started


def via_gateway(channel, tokens: list[str]):
    chat = chat_pb2_grpc.ChatServiceStub(channel)
    asked = itertools.count()   # the next question (itertools.count is atomic under the GIL)

    def work(i: int, started: float) -> Stream:
        first, used = None, 0
        question = QUESTIONS[next(asked)]
        request = chat_pb2.AskRequest(message=chat_pb2.UserMessage(text=question, max_tokens=MAX_TOKENS))
        for reply in chat.Ask(request, metadata=[("authorization", f"Bearer {tokens[i]}")], timeout=300):
            if reply.WhichOneof("kind") == "delta" and reply.delta.text and first is None:
                first = time.perf_counter() - started
            if reply.WhichOneof("kind") == "end":
                used = reply.end.usage.completion_tokens
                assert reply.end.fallback_reason == "", reply.end.fallback_reason
        return Stream(first, used)
    return work


def in_process(engine: generation.Engine, prompts: list[tuple[list[dict], str]], temperature: float,
               asked: Iterator[int], stop: list[str] = ONE_PARAGRAPH, full_length: bool = False):
    """`asked` draws the next question: one count for all this engine's rows."""
    def work(i: int, started: float) -> Stream:
        first = None

        def on_piece(text: str) -> bool:
            nonlocal first
            if first is None:
                first = time.perf_counter() - started
            return False
        prompt, grammar = prompts[next(asked)]
        result = engine.generate(engine.fit(prompt, MAX_TOKENS), MAX_TOKENS, on_piece,
                                 temperature=temperature, stop=stop, grammar=grammar,
                                 full_length=full_length)
        return Stream(first, result.completion_tokens)
    return work


def figures(runs: list[tuple[list[Stream], float]]) -> dict[str, float]:
    firsts = sorted(s.first_token_s for streams, _ in runs for s in streams)
    p95 = firsts[min(len(firsts) - 1, round(0.95 * (len(firsts) - 1)))]
    made = [s.tokens for streams, _ in runs for s in streams]
    return {"p50": statistics.median(firsts) * 1000, "p95": p95 * 1000,
            "rate": sum(made) / sum(w for _, w in runs), "length": statistics.mean(made),
            "answers": len(made)}


def prompts(channel, token: str) -> list[tuple[list[dict], str]]:
    """Each question's prompt and grammar as chat-svc builds them for a new conversation."""
    search = search_pb2_grpc.SearchServiceStub(channel)
    built = []
    for question in QUESTIONS:
        hits = search.Search(search_pb2.SearchRequest(query=question, page_size=RETRIEVED),
                             metadata=[("authorization", f"Bearer {token}")], timeout=10).results
        built.append((messages(question, list(hits), []),
                      generation.cited_only(**cited(list(hits)))))
    return built


def main() -> int:
    mesh = MeshUnderTest.for_bench()
    settings = engine_settings()
    temperature = mesh.topo.services["chat"].temperature     # as chat-svc samples
    print(f"aimesh chat latency: {machine()}\nchat_lm: {settings}; max_tokens {MAX_TOKENS}, "
          f"temperature {temperature}; flush_ms {parameters().get('flush_ms', 0)}; levels {LEVELS}, "
          f"{ROUNDS} rounds each per side\n")
    started = time.perf_counter()
    engine = generation.Engine(models.output("chat_lm") / chat_lm.WEIGHTS, settings)
    print(f"in-process engine loaded in {time.perf_counter() - started:.1f} s")
    local_asked = itertools.count()
    built: list[tuple[list[dict], str]] = []
    runs = {(side, level): [] for side in ("gateway", "in-process") for level in LEVELS}
    steady = {(side, level): [] for side in ("gateway", "in-process") for level in (1, max(LEVELS))}
    full = {(side, level): [] for side in ("gateway", "in-process") for level in LEVELS}
    cpu: dict[int, list[dict[str, float]]] = {level: [] for level in LEVELS}

    def one_paragraph(mesh: MeshUnderTest, channel, tokens: list[str]) -> None:
        built.extend(prompts(channel, tokens[0]))
        mesh_work = via_gateway(channel, tokens)
        local_work = in_process(engine, built, temperature, local_asked)
        # first-call costs untimed: every slot once, as on a server that has been serving
        together(mesh_work, WARM_UP), together(local_work, WARM_UP)
        meter = CpuMeter(mesh)
        for _ in range(ROUNDS):
            for level in LEVELS:
                meter.start()
                runs["gateway", level].append(together(mesh_work, level))
                cpu[level].append(meter.per_request_ms(sum(s.tokens for s in runs["gateway", level][-1][0])))
                runs["in-process", level].append(together(local_work, level))
        for _ in range(ROUNDS):
            for level in (1, max(LEVELS)):
                steady["gateway", level].append(sustained(mesh_work, level))
                steady["in-process", level].append(sustained(local_work, level))

    def full_length(mesh: MeshUnderTest, channel, tokens: list[str]) -> None:
        mesh_work = via_gateway(channel, tokens)
        local_work = in_process(engine, built, temperature, local_asked, stop=[], full_length=True)
        together(mesh_work, WARM_UP)
        for _ in range(FULL_ROUNDS):
            for level in LEVELS:
                full["gateway", level].append(together(mesh_work, level))
                full["in-process", level].append(together(local_work, level))

    clean = True
    # the second mesh: the first's state dir and ports, chat-svc asking for full answers
    full_mesh = MeshUnderTest(mesh.state, int(mesh.env["AIMESH_PORT_OFFSET"]), FULL_LENGTH_TOPOLOGY)
    for each, rows in ((mesh, one_paragraph), (full_mesh, full_length)):
        shutil.rmtree(each.state, ignore_errors=True)
        try:
            print(f"mesh up with demo data in {each.up(demo_data=True):.1f} s ({each.env['AIMESH_TOPOLOGY']})")
            tokens = accounts(each.gateway, max(LEVELS))
            with grpc.insecure_channel(each.gateway) as channel:
                rows(each, channel, tokens)
        finally:
            clean = each.down_and_report() and clean
    for title, table, levels in (
            (f"bursts (the chats sent at once, {ROUNDS} rounds)", runs, LEVELS),
            (f"sustained ({ROUNDS} rounds of {SUSTAINED_S} s)", steady, (1, max(LEVELS))),
            (f"{MAX_TOKENS} tokens every answer (bursts, {FULL_ROUNDS} rounds; the gateway side on "
             f"{FULL_LENGTH_TOPOLOGY.name})", full, LEVELS)):
        rows = {key: figures(value) for key, value in table.items()}
        print(f"\n{title}\n{'side':<11} {'chats':>5} {'first p50 ms':>13} {'first p95 ms':>13} "
              f"{'tok/s':>7} {'x one chat':>10} {'tokens a chat':>14} {'answers':>8}")
        for (side, level), row in rows.items():
            print(f"{side:<11} {level:>5} {row['p50']:>13.0f} {row['p95']:>13.0f} {row['rate']:>7.1f} "
                  f"{row['rate'] / rows[side, 1]['rate']:>10.2f} {row['length']:>14.0f} {row['answers']:>8}")
        print("gateway / in-process, aggregate tokens/s (target >= 90%): " + ", ".join(
            f"{level} chats {rows['gateway', level]['rate'] / rows['in-process', level]['rate']:.0%}"
            for level in levels))
    print("\nCPU ms a token on the gateway side (median of the rounds; triton includes the engine):")
    for level in LEVELS:
        print(f"  {level} chats: " + ", ".join(
            f"{name} {statistics.median(row.get(name, 0.0) for row in cpu[level]):.2f}" for name in PATH))
    return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main())
