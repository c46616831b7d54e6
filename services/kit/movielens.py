"""MovieLens 100k, the demo catalog, read from the copy the recbole package ships.

Read as plain files: recbole is installed without its dependencies and never imported (it would
import torch). MovieLens data is under GroupLens' terms."""
from __future__ import annotations

import collections
import importlib.util
from dataclasses import dataclass
from functools import cache
from pathlib import Path


@dataclass(frozen=True)
class Movie:
    item_id: int
    title: str
    year: str
    genres: tuple[str, ...]


def _dataset() -> Path:
    spec = importlib.util.find_spec("recbole")
    if spec is None:
        raise RuntimeError("the recbole package (MovieLens data) is not installed")
    return Path(next(iter(spec.submodule_search_locations or ()))) / "dataset_example" / "ml-100k"


@dataclass(frozen=True)
class Rating:
    user_id: int
    item_id: int
    rating: float
    timestamp: int          # seconds since the epoch


@cache
def movies() -> tuple[Movie, ...]:
    found = []
    for line in (_dataset() / "ml-100k.item").read_text(encoding="latin-1").splitlines()[1:]:
        item_id, title, year, genres = (line.split("\t") + ["", "", ""])[:4]
        found.append(Movie(int(item_id), title.strip(), year.strip(), tuple(genres.split())))
    return tuple(found)


@cache
def ratings() -> tuple[Rating, ...]:
    """All 100,000 ratings, in file order."""
    found = []
    for line in (_dataset() / "ml-100k.inter").read_text().splitlines()[1:]:
        user_id, item_id, rating, timestamp = line.split("\t")
        found.append(Rating(int(user_id), int(item_id), float(rating), int(float(timestamp))))
    return tuple(found)


def rating_counts() -> collections.Counter:
    """How many ratings each item has: its popularity before the mesh existed."""
    return collections.Counter(r.item_id for r in ratings())


def history(user_id: int, limit: int) -> list[Rating]:
    """A MovieLens user's latest `limit` ratings, oldest first."""
    theirs = sorted((r for r in ratings() if r.user_id == user_id), key=lambda r: r.timestamp)
    return theirs[-limit:]
