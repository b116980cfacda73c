"""argon2id password hashing, off the event loop, on a small bounded pool of threads.

Each hash costs about 64 MiB and tens of milliseconds; a dedicated executor of a few
threads bounds both, so a burst of sign-ins queues instead of exhausting memory or
stalling every other request.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Final

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

HASH_THREADS_MAX: Final = 4
PASSWORD_LENGTH_MIN: Final = 12
PASSWORD_LENGTH_MAX: Final = 128


class Passwords:
    """Hash and verify passwords; owns its executor (close it in the lifespan)."""

    def __init__(self, hasher: PasswordHasher | None = None) -> None:
        self._hasher = hasher if hasher is not None else PasswordHasher()
        self._executor = ThreadPoolExecutor(
            max_workers=HASH_THREADS_MAX, thread_name_prefix="argon2"
        )
        # Verified against when the email is unknown, so that "no such user" takes as
        # long as "wrong password" and timing reveals nothing.
        self._decoy = self._hasher.hash("decoy password that matches nothing")

    async def hash(self, password: str) -> str:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._hasher.hash, password)

    async def verify(self, password_hash: str | None, password: str) -> bool:
        """Whether `password` matches; with no hash, the same work for a False."""
        loop = asyncio.get_running_loop()
        target = self._decoy if password_hash is None else password_hash
        matches = await loop.run_in_executor(self._executor, self._verify, target, password)
        return matches and password_hash is not None

    def _verify(self, password_hash: str, password: str) -> bool:
        try:
            return self._hasher.verify(password_hash, password)
        except (VerificationError, InvalidHashError):
            return False

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
