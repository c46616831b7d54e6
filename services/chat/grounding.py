"""Whether an answer is grounded in the catalog: which titles it names, and which title-like spans
it names that are not the ones it was given (an invented title).

A title is recognised in any of the catalog's spellings ("Lion King, The" is also "The Lion King"),
case-insensitively, on word boundaries. A title-like span is a quoted phrase (not a lone generic
word like "Catalog"), or words before a year in parentheses ("Star Wars II (1999)"): names of
people or places are not counted, so a film named without quotes or year is not caught."""
from __future__ import annotations

import re
from collections.abc import Iterable

ARTICLE = re.compile(r"^(.*), (The|A|An|Les|La|Le|Il|Das|Der|Die|El)$", re.IGNORECASE)
QUOTED = re.compile(r"[\"“”«»]([^\"“”«»\n]{2,80})[\"“”«»]")
# Up to 80 characters before a year in parentheses, from a capital: the title is a suffix of it
# ("Watch Nightmare on Elm Street, A (1984)").
YEARED = re.compile(r"([A-Z0-9][^()\n\"“”«»]{0,80}?)\s*\((?:19|20)\d\d\)")
GENERIC = {"the", "a", "an", "catalog", "film", "films", "movie", "movies"}   # not a title quoted


def normalise(text: str) -> str:
    """Lower case, parentheses and punctuation dropped, spaces collapsed."""
    text = re.sub(r"\([^)]*\)", " ", text)
    return " ".join(re.sub(r"[^\w&' ]+", " ", text.lower()).split())


def spellings(title: str) -> set[str]:
    """A catalog title's normalised spellings: as stored, with its article moved to the front, and
    without its article."""
    bare = re.sub(r"\s*\([^)]*\)\s*$", "", title).strip()
    found = {normalise(bare)}
    if (match := ARTICLE.match(bare)):
        found |= {normalise(f"{match[2]} {match[1]}"), normalise(match[1])}
    return {s for s in found if s}


def displayed(title: str) -> list[str]:
    """How an answer may write a catalog title: as stored, and with its article in front."""
    bare = re.sub(r"\s*\([^)]*\)\s*$", "", title).strip()
    match = ARTICLE.match(bare)
    return [bare, f"{match[2]} {match[1]}"] if match else [bare]


def names(answer: str, title: str) -> bool:
    """Whether the answer names this title."""
    said = f" {normalise(answer)} "
    return any(f" {spelling} " in said for spelling in spellings(title))


def invented(answer: str, known: Iterable[str]) -> list[str]:
    """Title-like spans that are none of the known titles. A quoted span may be part of a title
    ("Star Wars" for a longer one); the capitalised run before a year may begin with words of the
    sentence ("Watch Toy Story (1995)"), so a title it ends with counts."""
    known_spellings = {s for title in known for s in spellings(title)}

    def known_quote(said: str) -> bool:
        return any(said == k or f" {said} " in f" {k} " for k in known_spellings)

    def known_yeared(said: str) -> bool:
        words = said.split()
        return any(" ".join(words[i:]) in known_spellings for i in range(len(words)))
    found = [(m.strip(), m, known_quote) for m in QUOTED.findall(answer)
             if not set(normalise(m).split()) <= GENERIC]
    # a run before a year may reach back into its sentence: checked whole, named from its sentence
    found += [(re.split(r"[.!?]\s+", m)[-1].strip(), m, known_yeared) for m in YEARED.findall(answer)]
    return [span for span, whole, is_known in found
            if normalise(whole) and not is_known(normalise(whole))]
