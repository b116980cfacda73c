"""argon2id password hashing, off the event loop, on a small bounded pool of threads.

Each hash costs about 64 MiB and tens of milliseconds at the default cost; a dedicated
executor of a few threads bounds both, so a burst of sign-ins queues instead of
exhausting memory or stalling every other request.

The cost of new hashes comes from the settings (`HashCost.of(settings)`), with
argon2-cffi's defaults unless told otherwise; a stored hash carries its own parameters,
so hashes made at another cost still verify.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Final

import msgspec
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from ledger.settings import Settings

HASH_THREADS_MAX: Final = 4
PASSWORD_LENGTH_MIN: Final = 12
PASSWORD_LENGTH_MAX: Final = 128


class HashCost(msgspec.Struct, frozen=True, kw_only=True):
    """argon2id parameters of new hashes; the defaults are argon2-cffi's (RFC 9106)."""

    time_cost: int = 3
    memory_kib: int = 65536
    parallelism: int = 4

    @classmethod
    def of(cls, settings: Settings) -> HashCost:
        return cls(
            time_cost=settings.argon2_time_cost,
            memory_kib=settings.argon2_memory_kib,
            parallelism=settings.argon2_parallelism,
        )

    def hasher(self) -> PasswordHasher:
        return PasswordHasher(
            time_cost=self.time_cost, memory_cost=self.memory_kib, parallelism=self.parallelism
        )


class Passwords:
    """Hash and verify passwords; owns its executor (close it in the lifespan)."""

    def __init__(self, cost: HashCost | None = None) -> None:
        self._hasher = (cost or HashCost()).hasher()
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
