"""Demo accounts, one per tier and an admin, created once when the mesh runs with demo data.
The runner reads this list too, to print the accounts and log in.

Alice and Bob come with the latest ratings of a MovieLens user as their purchase history, so
their first recommendations come from the model. The purchases are announced like any other
(through the outbox, so recommend-svc's history consumer takes them), marked imported: they
notify nobody."""
from __future__ import annotations

from datetime import UTC, datetime

from services.kit import movielens

from .accounts import register
from .store import Announce, UserStore

PASSWORD = "aimesh-demo"
ACCOUNTS = [
    # email, display name, tier, role
    ("alice@demo.aimesh", "Alice", "free", "user"),
    ("bob@demo.aimesh", "Bob", "pro", "user"),
    ("admin@demo.aimesh", "Admin", "pro", "admin"),
]
HISTORIES = {"alice@demo.aimesh": 1, "bob@demo.aimesh": 2}   # email -> MovieLens user id
HISTORY_LENGTH = 20   # enough for the model to know a taste; the recommender reads the last 50


def history(email: str) -> list[movielens.Rating]:
    return movielens.history(HISTORIES[email], HISTORY_LENGTH) if email in HISTORIES else []


async def seed(users: UserStore, purchased: Announce) -> None:
    """Create what is missing; an account's history is imported once (only while it has none)."""
    for email, name, tier, role in ACCOUNTS:
        user = await users.by_email(email) or await register(users, email, PASSWORD, name,
                                                             tier=tier, role=role)
        if bought := history(email):
            await users.import_purchases(
                user.id, [(r.item_id, datetime.fromtimestamp(r.timestamp, UTC)) for r in bought],
                purchased)
