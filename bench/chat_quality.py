"""Are chat answers grounded in the catalog? Asks the committed question set through the gateway
and prints retrieval hit@3 (an expected title among the turn's citations), the grounded rate (the
answer names at least one cited title), the invented-title rate (the answer presents a title that is
not in the catalog: services/chat/grounding.py's spans), how often chat-svc had to correct an answer,
and the median answer length. Each question is asked twice: alone, and as a follow-up (the second
turn of a conversation that began with the question before it), where the model also reads the
first turn. Search alone is scored too, in each of its modes, on the same questions (hit@3 of the
first three results).

Deterministic: its own topology (bench/chat_quality.yaml) has chat-svc decode greedily
(temperature 0). Prints figures and asserts none. Runs its own mesh in /tmp/aimesh-bench-state on
AIMESH_PORT_OFFSET=2000 and always brings it down. Run it as bin/aimesh runs the CLI:

  bin/aimesh bench chat_quality
"""
from __future__ import annotations

import shutil
import statistics
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
from helpers.common import machine

from aimesh.chat.v1 import chat_pb2, chat_pb2_grpc
from aimesh.common.v1 import common_pb2
from aimesh.harness import MeshUnderTest
from aimesh.search.v1 import search_pb2, search_pb2_grpc
from aimesh.user.v1 import user_pb2, user_pb2_grpc
from services.chat.grounding import invented, names
from services.kit.movielens import movies

MAX_TOKENS = 96
CONCURRENT = 4

# (question, expected): expected is a list of titles, or a dict picking titles from the catalog
# by genres (all of them) and years (inclusive range).
QUESTIONS = [
    # by title words
    ("Tell me about the film with the lion king.", ["Lion King, The"]),
    ("Which film has the usual suspects in it?", ["Usual Suspects, The"]),
    ("What do you know about Jurassic Park?", ["Jurassic Park"]),
    ("I loved Star Wars. Is it in the catalog?", ["Star Wars"]),
    ("I want to watch Toy Story tonight.", ["Toy Story"]),
    ("Which film is about someone sleepless in Seattle?", ["Sleepless in Seattle"]),
    ("Is Fargo in the catalog?", ["Fargo"]),
    ("Tell me about Apollo 13.", ["Apollo 13"]),
    ("What is Forrest Gump about?", ["Forrest Gump"]),
    ("Do you have Pulp Fiction?", ["Pulp Fiction"]),
    ("Do you have the Shawshank Redemption?", ["Shawshank Redemption, The"]),
    ("Tell me about Braveheart.", ["Braveheart"]),
    ("Something about the silence of the lambs?", ["Silence of the Lambs, The"]),
    ("Is there a Batman film?", ["Batman Forever", "Batman", "Batman Returns", "Batman & Robin"]),
    ("Recommend a Free Willy film.", ["Free Willy", "Free Willy 2: The Adventure Home",
                                      "Free Willy 3: The Rescue"]),
    ("What about Twelve Monkeys?", ["Twelve Monkeys"]),
    ("Tell me about Aladdin.", ["Aladdin", "Aladdin and the King of Thieves"]),
    ("Do you have Home Alone?", ["Home Alone", "Home Alone 3"]),
    ("The Terminator film about judgment day?", ["Terminator 2: Judgment Day"]),
    ("Is Blade Runner in the catalog?", ["Blade Runner"]),
    ("Which film dances with wolves?", ["Dances with Wolves"]),
    ("Tell me about Snow White and the seven dwarfs.", ["Snow White and the Seven Dwarfs"]),
    ("A film about three colors, red.", ["Three Colors: Red"]),
    ("The film with four weddings and a funeral?", ["Four Weddings and a Funeral"]),
    ("The nightmare before Christmas, is it here?", ["Nightmare Before Christmas, The"]),
    ("Do you have Titanic?", ["Titanic"]),
    ("The Godfather, please.", ["Godfather, The", "Godfather: Part II, The"]),
    # by genre and era
    ("Recommend a documentary.", {"genres": ["Documentary"]}),
    ("Suggest a film noir.", {"genres": ["Film-Noir"]}),
    ("I want to watch a western.", {"genres": ["Western"]}),
    ("A good horror film, please.", {"genres": ["Horror"]}),
    ("An animated film for children.", {"genres": ["Animation"]}),
    ("A musical I could watch with my family.", {"genres": ["Musical"]}),
    ("A war film.", {"genres": ["War"]}),
    ("A science fiction film from the 1970s.", {"genres": ["Sci-Fi"], "years": (1970, 1979)}),
    ("A romantic comedy from the 1990s.", {"genres": ["Comedy", "Romance"], "years": (1990, 1999)}),
    ("A crime thriller.", {"genres": ["Crime", "Thriller"]}),
    ("A film from the 1930s.", {"years": (1930, 1939)}),
    ("A mystery film.", {"genres": ["Mystery"]}),
    ("A fantasy film.", {"genres": ["Fantasy"]}),
    ("An adventure film from the 1980s.", {"genres": ["Adventure"], "years": (1980, 1989)}),
    ("A children's film from 1996.", {"genres": ["Children's"], "years": (1996, 1996)}),
    ("A comedy from 1994.", {"genres": ["Comedy"], "years": (1994, 1994)}),
    ("An action film from 1995.", {"genres": ["Action"], "years": (1995, 1995)}),
]


def expected_titles(expected) -> set[str]:
    if isinstance(expected, list):
        return set(expected)
    low, high = expected.get("years", (0, 9999))
    return {m.title for m in movies()
            if set(expected.get("genres", ())) <= set(m.genres) and m.year.isdigit()
            and low <= int(m.year) <= high}


@dataclass
class Turn:
    question: str
    expected: set[str]
    answer: str
    cited: list[str]
    corrected: bool
    conversation_id: str


def account(gateway: str) -> str:
    with grpc.insecure_channel(gateway) as channel:
        users = user_pb2_grpc.UserServiceStub(channel)
        email = f"quality-{uuid.uuid4().hex[:8]}@example.com"
        users.Register(user_pb2.RegisterRequest(email=email, password="quality bench", display_name="Q"),
                       timeout=10)
        return users.Login(user_pb2.LoginRequest(email=email, password="quality bench"),
                           timeout=10).access_token


def ask(channel, token: str, question: str, expected, conversation_id: str = "") -> Turn:
    pieces = list(chat_pb2_grpc.ChatServiceStub(channel).Ask(
        chat_pb2.AskRequest(message=chat_pb2.UserMessage(text=question, max_tokens=MAX_TOKENS,
                                                         conversation_id=conversation_id)),
        metadata=[("authorization", f"Bearer {token}")], timeout=300))
    end = pieces[-1].end
    assert end.source == common_pb2.SOURCE_MODEL, f"not answered by the model: {end.fallback_reason}"
    answer = "".join(p.delta.text for p in pieces if p.WhichOneof("kind") == "delta")
    cited = [c.title for p in pieces if p.WhichOneof("kind") == "citations" for c in p.citations.citations]
    # GROUNDING_CORRECTED, where the contract has it (the same bench ran on the code before it)
    corrected = getattr(end, "grounding", 0) == getattr(chat_pb2, "GROUNDING_CORRECTED", -1)
    return Turn(question, expected_titles(expected), answer, cited, corrected, end.conversation_id)


def follow_up(channel, token: str, first: str, question: str, expected) -> Turn:
    """The question as the second turn of a conversation that began with `first`."""
    conversation = ask(channel, token, first, []).conversation_id
    return ask(channel, token, question, expected, conversation)


def search_hits(channel, token: str) -> dict[str, float]:
    """hit@3 of Search alone, in each mode the contract offers."""
    search = search_pb2_grpc.SearchServiceStub(channel)
    modes = {"default": {}}
    if hasattr(search_pb2, "SearchMode"):
        modes = {name.removeprefix("SEARCH_MODE_").lower(): {"mode": value}
                 for name, value in search_pb2.SearchMode.items() if value}
    found = {}
    for name, mode in modes.items():
        hits = 0
        for question, expected in QUESTIONS:
            reply = search.Search(search_pb2.SearchRequest(query=question, page_size=3, **mode),
                                  metadata=[("authorization", f"Bearer {token}")], timeout=10)
            hits += bool({r.document.title for r in reply.results} & expected_titles(expected))
        found[name] = hits / len(QUESTIONS)
    return found


def main() -> int:
    mesh = MeshUnderTest.for_bench(topology_file=Path(__file__).with_name("chat_quality.yaml"))
    gateway = f"127.0.0.1:{mesh.topo.gateway.edge_port}"
    catalog = [m.title for m in movies()]
    print(f"aimesh chat quality: {machine()}\n{len(QUESTIONS)} questions, max_tokens {MAX_TOKENS}, "
          f"temperature {mesh.topo.services['chat'].temperature}, {CONCURRENT} at a time\n")
    shutil.rmtree(mesh.state, ignore_errors=True)
    try:
        print(f"mesh up with demo data in {mesh.up(demo_data=True):.1f} s")
        token = account(gateway)
        with grpc.insecure_channel(gateway) as channel:
            searched = search_hits(channel, token)
            with ThreadPoolExecutor(CONCURRENT) as pool:
                alone = list(pool.map(lambda q: ask(channel, token, *q), QUESTIONS))
                firsts = [QUESTIONS[i - 1][0] for i in range(len(QUESTIONS))]
                following = list(pool.map(lambda f, q: follow_up(channel, token, f, *q), firsts, QUESTIONS))
    finally:
        clean = mesh.down_and_report()
    print(f"\n{'Search hit@3':<34}" + ", ".join(f"{mode} {rate:.2f}" for mode, rate in searched.items()))
    for name, turns in (("asked alone", alone), ("asked as a follow-up", following)):
        report(name, turns, catalog)
    return 0 if clean else 1


def report(name: str, turns: list[Turn], catalog: list[str]) -> None:
    print(f"\n--- {name}")
    for turn in turns:
        print(f"\nQ: {turn.question}\n   cited: {turn.cited}\n   A: {turn.answer.strip()!r}")
    hit = sum(bool(set(t.cited[:3]) & t.expected) for t in turns) / len(turns)
    grounded = sum(any(names(t.answer, c) for c in t.cited) for t in turns) / len(turns)
    made_up = [t for t in turns if invented(t.answer, catalog)]
    print(f"\n{name}:")
    print(f"{'chat retrieval hit@3':<34}{hit:.2f} (target >= 0.9)")
    print(f"{'grounded rate':<34}{grounded:.0%} (target >= 90%)")
    print(f"{'invented-title rate':<34}{len(made_up) / len(turns):.0%} (target <= 5%)"
          + "".join(f"\n    {invented(t.answer, catalog)} in answer to {t.question!r}" for t in made_up))
    print(f"{'answers corrected by chat-svc':<34}{sum(t.corrected for t in turns) / len(turns):.0%}")
    print(f"{'median answer length':<34}{statistics.median(len(t.answer.split()) for t in turns):.0f} words")


if __name__ == "__main__":
    sys.exit(main())
