"""Demo accounts, one per tier and an admin, created once when the mesh runs with demo data.
The runner reads this list too, to print the accounts and log in."""
from __future__ import annotations

from .accounts import register
from .store import UserStore

PASSWORD = "aimesh-demo"
ACCOUNTS = [
    # email, display name, tier, role
    ("alice@demo.aimesh", "Alice", "free", "user"),
    ("bob@demo.aimesh", "Bob", "pro", "user"),
    ("admin@demo.aimesh", "Admin", "pro", "admin"),
]


async def seed(users: UserStore) -> None:
    for email, name, tier, role in ACCOUNTS:
        if await users.by_email(email) is None:
            await register(users, email, PASSWORD, name, tier=tier, role=role)
