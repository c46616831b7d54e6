"""The MovieLens catalog and its rating counts, as recommend-svc's own item table."""
from __future__ import annotations

from services.kit import movielens

from .store import RecommendStore


async def seed(store: RecommendStore) -> None:
    ratings = movielens.rating_counts()
    await store.add_items([(m.item_id, m.title, ratings[m.item_id]) for m in movielens.movies()])
