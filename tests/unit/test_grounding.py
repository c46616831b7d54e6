"""The grounding scorer on fixed texts: titles recognised in their spellings, invented ones caught."""
from services.chat.grounding import invented, names, spellings

CATALOG = ["Lion King, The", "Star Wars", "Toy Story", "Sleepless in Seattle", "Babe"]


def test_a_title_is_named_in_any_of_its_spellings():
    assert spellings("Lion King, The") == {"lion king the", "the lion king", "lion king"}
    assert names("I'd pick The Lion King (1994), a classic.", "Lion King, The")
    assert names("toy story is fun", "Toy Story")
    assert not names("A story about toys.", "Toy Story")
    assert not names("Babeland is not a film here", "Babe")


def test_a_span_outside_the_known_titles_is_invented():
    answer = 'Watch "Star Wars II: The Force Awakens" or "Star Wars", and Toyyuram (1995).'
    assert invented(answer, CATALOG) == ["Star Wars II: The Force Awakens", "Toyyuram"]
    assert invented("Watch Sleepless in Seattle (1993) and \"The Lion King\".", CATALOG) == []
    # not titles: a person's name, a generic word in quotes; a title ending in its article is one
    assert invented('With Tom Hanks, in the movie "Catalog": Lion King, The (1994).', CATALOG) == []
    assert invented("I'm sorry. The movie Nightmare on Elm Street, A (1984).", CATALOG) == [
        "The movie Nightmare on Elm Street, A"]


def hits(*texts: str):
    from aimesh.search.v1 import search_pb2
    return [search_pb2.SearchResult(document=search_pb2.Document(title=t.split(" (")[0], text=t))
            for t in texts]


def test_the_post_check_corrects_an_answer_with_an_invented_title():
    from aimesh.chat.v1 import chat_pb2
    from services.chat.server import check
    found = hits("Star Wars (1977). Genres: Action, Sci-Fi.", "Stargate (1994). Genres: Sci-Fi.")
    grounding, correction = check('Star Wars (1977).\nLike "Star Wars II: The Force Awakens".', found)
    assert grounding == chat_pb2.GROUNDING_CORRECTED
    assert correction == ("\n\n(Star Wars II: The Force Awakens is not in the catalog. "
                          "From the catalog: Star Wars (1977). Genres: Action, Sci-Fi.)")
    assert check("Stargate is a fine film.", found) == (chat_pb2.GROUNDING_CITED, "")
    assert check("I like films.", found)[0] == chat_pb2.GROUNDING_CORRECTED     # names none
    assert check("I like films.", []) == (chat_pb2.GROUNDING_NONE, "")
