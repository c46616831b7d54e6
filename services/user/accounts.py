"""Creating accounts and checking passwords (argon2, off the event loop)."""
from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from argon2 import PasswordHasher
from argon2.exceptions import VerificationError

from services import kit

from .store import Announce, EmailTaken, User, UserStore

passwords = PasswordHasher()
# One check already runs its lanes on `parallelism` threads (argon2-cffi's default: 4), so more
# checks at once than cores / parallelism only share the cores: a burst of them then ends late all
# together (past the gateway's deadline) and slows every other request on those cores. They queue
# for a pool of that size instead of asyncio's default (cores + 4 threads); measured by
# bench/login_burst.py.
checks = ThreadPoolExecutor(max(1, len(os.sched_getaffinity(0)) // passwords.parallelism),
                            thread_name_prefix="password-check")
T = TypeVar("T")


async def _checked(work: Callable[[], T]) -> T:
    return await asyncio.get_running_loop().run_in_executor(checks, work)


def registration(request) -> tuple[str, str, str]:
    """A RegisterRequest's email, password and display name, checked (INVALID_ARGUMENT naming the
    field): one rule for every way an account is made."""
    return (kit.validate.email(request), kit.validate.text(request, "password", min_len=8, max_len=256),
            kit.validate.text(request, "display_name", max_len=80))


async def register(users: UserStore, email: str, password: str, display_name: str, *,
                   tier: str = "free", role: str = "user", announce: Announce | None = None) -> User:
    password_hash = await _checked(lambda: passwords.hash(password))
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
    return await _checked(verify)
