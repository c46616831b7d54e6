"""Demo accounts, one per tier and an admin, created once when the mesh runs with demo data."""
from __future__ import annotations

from .store import UserStore

PASSWORD = "aimesh-demo"
ACCOUNTS = [
    # email, display name, tier, role
    ("alice@demo.aimesh", "Alice", "free", "user"),
    ("bob@demo.aimesh", "Bob", "pro", "user"),
    ("admin@demo.aimesh", "Admin", "pro", "admin"),
]


async def seed(users: UserStore) -> None:
    from .server import register   # the same path as the RPC: hashing, uniqueness
    for email, name, tier, role in ACCOUNTS:
        if await users.by_email(email) is None:
            await register(users, email, PASSWORD, name, tier=tier, role=role)
