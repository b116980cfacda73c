"""The database half of authenticating a request, with concurrent checks merged.

Every signed-in request checks its token against auth.credentials and
auth.revoked_access_tokens (api/security.py): the user exists, is not disabled, has the
token's token_version, and the token's jti was not revoked by a logout. That is a round
trip per request, and under load it was the largest cost in the API's own code (ADR
0013). So, as the command side does with its stream loads (commands/reads.py), at most
QUERIES_MAX checks are in flight per process; the checks that arrive meanwhile wait and
go together, as one statement, when one of them returns. A lone check is sent at once.

A merged statement is one snapshot taken no earlier than each of its checks was asked:
every check still sees every logout, password change or disable committed before its
request asked, so revocation is as immediate as with a statement of its own.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import deque
from typing import Final

import asyncpg

from api.credentials import COLUMNS, Credential, credential_of

QUERIES_MAX: Final = 4
CHECKS_PER_QUERY_MAX: Final = 256

# One row per check whose user exists; `ordinal` says which check (1-based).
_SQL: Final = f"""
SELECT q.ordinal, {", ".join(f"c.{column}" for column in COLUMNS)},
       EXISTS (SELECT 1 FROM auth.revoked_access_tokens r WHERE r.jti = q.jti) AS revoked
FROM unnest($1::uuid[], $2::text[]) WITH ORDINALITY AS q (user_id, jti, ordinal)
JOIN auth.credentials c ON c.user_id = q.user_id"""

Found = tuple[Credential | None, bool]


class _Check:
    __slots__ = ("future", "jti", "user_id")

    def __init__(self, user_id: uuid.UUID, jti: str, future: asyncio.Future[Found]) -> None:
        self.user_id, self.jti, self.future = user_id, jti, future


class AccessChecks:
    """Checks access tokens' users and jtis, merging the checks made at the same time."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        queries_max: int = QUERIES_MAX,
        checks_per_query_max: int = CHECKS_PER_QUERY_MAX,
    ) -> None:
        assert queries_max >= 1
        assert checks_per_query_max >= 1
        self.pool = pool
        self.queries_max = queries_max
        self.checks_per_query_max = checks_per_query_max
        self._waiting: deque[_Check] = deque()
        self._running: set[asyncio.Task[None]] = set()

    async def check(self, user_id: uuid.UUID, jti: str) -> Found:
        """The user's credential (None if there is no such user) and whether the token
        with this jti was revoked."""
        future: asyncio.Future[Found] = asyncio.get_running_loop().create_future()
        self._waiting.append(_Check(user_id, jti, future))
        if len(self._running) < self.queries_max:
            self._send()
        # No timeout of its own: the statement under it is bounded by the pool's.
        return await future

    def _send(self) -> None:
        batch: list[_Check] = []
        while self._waiting and len(batch) < self.checks_per_query_max:
            check = self._waiting.popleft()
            if not check.future.done():  # Else its request was cancelled while it waited.
                batch.append(check)
        if batch:
            task = asyncio.create_task(self._query(batch))
            self._running.add(task)
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        if self._waiting and len(self._running) < self.queries_max:
            self._send()

    async def _query(self, batch: list[_Check]) -> None:
        try:
            rows = await self.pool.fetch(
                _SQL, [check.user_id for check in batch], [check.jti for check in batch]
            )
        except asyncio.CancelledError:
            for check in batch:
                check.future.cancel()
            raise
        except Exception as error:
            for check in batch:
                if not check.future.done():
                    check.future.set_exception(error)
            return
        found: dict[int, Found] = {
            row["ordinal"]: (credential_of(row), bool(row["revoked"])) for row in rows
        }
        for ordinal, check in enumerate(batch, start=1):
            if not check.future.done():
                check.future.set_result(found.get(ordinal, (None, False)))
