"""Chats that go on: what a conversation's later turns cost the chat model, through the gateway.

Two rows, alternated, each CHATS users (`--chats`) asking one question after another for
SECONDS: every question a new conversation, and every user holding one conversation for TURNS
turns (then a new one). Per row: answers (and those answered without the model: "chat model
busy" once its slots and queue are full), aggregate tokens/s, first-token p50/p95, and per turn of
a conversation the prompt's tokens and those the engine read (the rest it went on from, as it had
read them for the turn before: TurnEnd.usage.cached_prompt_tokens; 0 where the contract lacks it). chat-svc's
temperature is the topology's (0.7): a greedy turn is read whole by design. Prints figures and
asserts none. Runs its own mesh in /tmp/aimesh-bench-state on AIMESH_PORT_OFFSET=2000 and always
brings it down:

  bin/aimesh bench chat_conversations [--chats 8]
"""
from __future__ import annotations

import argparse
import random
import statistics
import sys
import threading
import time
from collections import defaultdict
from dataclasses import dataclass

import grpc
from helpers.common import accounts, fresh_mesh

from aimesh.chat.v1 import chat_pb2, chat_pb2_grpc
from services.kit import movielens

CHATS = 8
TURNS = 6           # a conversation's length in the second row
SECONDS = 30        # each row, each round
ROUNDS = 2
MAX_TOKENS = 128
FILMS = [movie.title for movie in movielens.movies()]


@dataclass
class Turn:
    index: int               # 1 for a conversation's first turn
    first_token_s: float
    tokens: int
    prompt_tokens: int
    read_tokens: int         # prompt tokens the engine read rather than went on from
    fallback: str            # why chat-svc answered without the model ("chat model busy"), or ""


def ask(chat, token: str, conversation_id: str, index: int, rng: random.Random) -> tuple[Turn, str]:
    question = f"Tell me about {rng.choice(FILMS)}."
    request = chat_pb2.AskRequest(message=chat_pb2.UserMessage(
        text=question, max_tokens=MAX_TOKENS, conversation_id=conversation_id))
    started, first = time.perf_counter(), None
    for reply in chat.Ask(request, metadata=[("authorization", f"Bearer {token}")], timeout=300):
        if reply.WhichOneof("kind") == "delta" and reply.delta.text and first is None:
            first = time.perf_counter() - started
        if reply.WhichOneof("kind") == "end":
            end = reply.end
    usage = end.usage
    cached = getattr(usage, "cached_prompt_tokens", 0)
    return Turn(index, first, usage.completion_tokens, usage.prompt_tokens, usage.prompt_tokens - cached,
                end.fallback_reason), end.conversation_id


def row(chat, tokens: list[str], turns: int, seed: int) -> tuple[list[Turn], float]:
    """A user per token asking for SECONDS, each conversation `turns` long: their turns, the wall time."""
    done: list[Turn] = []
    started = time.perf_counter()

    def user(i: int) -> None:
        rng, conversation, index = random.Random(seed * 100 + i), "", 0
        while time.perf_counter() < started + SECONDS:
            index = index % turns + 1
            turn, conversation = ask(chat, tokens[i], conversation if index > 1 else "", index, rng)
            done.append(turn)
    threads = [threading.Thread(target=user, args=(i,)) for i in range(len(tokens))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return done, time.perf_counter() - started


def report(name: str, runs: list[tuple[list[Turn], float]]) -> None:
    fallbacks = [t.fallback for done, _ in runs for t in done if t.fallback]
    turns = [t for done, _ in runs for t in done if not t.fallback]
    firsts = sorted(t.first_token_s for t in turns)
    rate = sum(t.tokens for t in turns) / sum(wall for _, wall in runs)
    print(f"\n{name}: {len(turns)} answers, {rate:.1f} tok/s, first token p50 "
          f"{statistics.median(firsts) * 1000:.0f} ms, p95 {firsts[round(0.95 * (len(firsts) - 1))] * 1000:.0f} ms, "
          f"prompt {statistics.mean(t.prompt_tokens for t in turns):.0f} tokens a turn, "
          f"read {statistics.mean(t.read_tokens for t in turns):.0f}; answered without the model "
          f"{len(fallbacks)}" + (f" ({', '.join(sorted(set(fallbacks)))})" if fallbacks else ""))
    by_index = defaultdict(list)
    for turn in turns:
        by_index[turn.index].append(turn)
    print(f"  {'turn':>4} {'answers':>8} {'prompt':>7} {'read':>5} {'first p50 ms':>13}")
    for index, these in sorted(by_index.items()):
        print(f"  {index:>4} {len(these):>8} {statistics.mean(t.prompt_tokens for t in these):>7.0f} "
              f"{statistics.mean(t.read_tokens for t in these):>5.0f} "
              f"{statistics.median(t.first_token_s for t in these) * 1000:>13.0f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--chats", type=int, default=CHATS, help="users chatting at once")
    chats = parser.parse_args().chats
    with fresh_mesh("aimesh chat conversations", "/tmp/aimesh-bench-state") as mesh:
        print(f"{chats} chats, {SECONDS} s a row, {ROUNDS} rounds, conversations of {TURNS} turns, "
              f"max_tokens {MAX_TOKENS}, temperature {mesh.topo.services['chat'].temperature}")
        tokens = accounts(mesh.gateway, chats)
        with grpc.insecure_channel(mesh.gateway) as channel:
            chat = chat_pb2_grpc.ChatServiceStub(channel)
            row(chat, tokens, 1, seed=0)     # warm-up: every slot used once, untimed
            runs: dict[int, list] = {1: [], TURNS: []}
            for round_ in range(ROUNDS):
                for turns in runs:
                    runs[turns].append(row(chat, tokens, turns, seed=1 + round_))
    report("every question a new conversation", runs[1])
    report(f"conversations of {TURNS} turns", runs[TURNS])
    return 0


if __name__ == "__main__":
    sys.exit(main())
