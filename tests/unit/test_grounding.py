"""The grounding scorer on fixed texts: titles recognised in their spellings, invented ones caught."""
from services.chat.grounding import invented, names, spellings, title_spans

CATALOG = ["Lion King, The", "Star Wars", "Toy Story", "Sleepless in Seattle", "Babe"]


def test_a_title_is_named_in_any_of_its_spellings():
    assert spellings("Lion King, The") == {"lion king the", "the lion king", "lion king"}
    assert names("I'd pick The Lion King (1994), a classic.", "Lion King, The")
    assert names("toy story is fun", "Toy Story")
    assert not names("A story about toys.", "Toy Story")
    assert not names("Babeland is not a film here", "Babe")


def test_quoted_and_yeared_spans_are_title_like():
    answer = 'Try "Star Wars II: The Force Awakens" or Jurassic Park (1993), with Tom Hanks.'
    assert title_spans(answer) == ["Star Wars II: The Force Awakens", "Jurassic Park"]


def test_a_span_outside_the_known_titles_is_invented():
    answer = 'Watch "Star Wars II: The Force Awakens" or "Star Wars", and Toyyuram (1995).'
    assert invented(answer, CATALOG) == ["Star Wars II: The Force Awakens", "Toyyuram"]
    assert invented("Watch Sleepless in Seattle (1993) and \"The Lion King\".", CATALOG) == []
