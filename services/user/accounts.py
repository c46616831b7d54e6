"""Creating accounts and checking passwords (argon2, off the event loop)."""
from __future__ import annotations

import asyncio

from argon2 import PasswordHasher
from argon2.exceptions import VerificationError

from services import kit

from .store import Announce, EmailTaken, User, UserStore

passwords = PasswordHasher()


async def register(users: UserStore, email: str, password: str, display_name: str, *,
                   tier: str = "free", role: str = "user", announce: Announce | None = None) -> User:
    password_hash = await asyncio.to_thread(passwords.hash, password)
    try:
        return await users.create(email, password_hash, display_name, tier=tier, role=role,
                                  announce=announce)
    except EmailTaken:
        raise kit.AlreadyExists(f"an account with email {email} exists") from None


async def password_matches(user: User, password: str) -> bool:
    def verify() -> bool:
        try:
            return passwords.verify(user.password_hash, password)
        except VerificationError:
            return False
    return await asyncio.to_thread(verify)
