"""chat-svc's prompt for a conversation: everything before the new question is the text the engine
read for the turn before, in the same place, so it goes on from there instead of reading it all
again; each question keeps the catalog entries it was asked with."""
from aimesh.search.v1 import search_pb2
from services.chat.model import SYSTEM, asked, catalog, lead, messages
from services.chat.store import Turn


def hits(*titles: str) -> list[search_pb2.SearchResult]:
    return [search_pb2.SearchResult(document=search_pb2.Document(
        title=t, text=f"{t} (1995). Genres: Drama.", metadata={"year": "1995", "genre:Drama": "1"}))
        for t in titles]


def test_a_follow_up_begins_with_the_turn_before_as_the_engine_read_it():
    first_hits, second_hits = hits("Heat", "Casino"), hits("Babe", "Twister")
    first = messages("Something tense?", first_hits, [])
    answer = lead(first_hits) + " it is tense."
    second = messages("And for children?", second_hits, [Turn("Something tense?", catalog(first_hits), answer)])
    # all of the first prompt but its last line, which the answer went on from
    assert second[:len(first) - 1] == first[:-1]
    assert second[len(first) - 1] == {"role": "assistant", "content": answer}
    assert answer.startswith(first[-1]["content"])
    assert second[-2] == {"role": "user", "content": asked("And for children?", catalog(second_hits))}
    assert "\nBabe (1995): drama\n" in second[-2]["content"] and "Heat" not in second[-2]["content"]


def test_every_conversation_begins_with_the_same_system_message():
    assert messages("a", hits("Heat"), [])[0] == messages("b", hits("Babe"), [])[0] == {
        "role": "system", "content": SYSTEM}


def test_a_turn_stored_without_its_entries_is_its_question_alone():
    earlier = [Turn("Anything?", "", "I found nothing in the catalog for that.")]
    assert messages("And now?", [], earlier)[1] == {"role": "user", "content": "Anything?"}
    assert messages("And now?", [], earlier)[-1] == {"role": "user", "content": "Catalog:\n(nothing found)\n\nAnd now?"}


def test_a_catalog_entry_is_its_title_year_and_genres_in_few_words():
    film = search_pb2.Document(title="Heat", text="Heat (1995). Genres: Action, Crime.",
                               metadata={"year": "1995", "genre:Crime": "1", "genre:Action": "1"})
    other = search_pb2.Document(title="Notes", text="A page of notes.")
    assert catalog([search_pb2.SearchResult(document=d) for d in (film, other)]) == (
        "Heat (1995): action, crime\nA page of notes.")
    assert lead([search_pb2.SearchResult(document=film)]) == "I suggest Heat (1995), because"
