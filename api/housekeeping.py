"""Housekeeping: the API's own rows that have outlived their use are deleted.

Four tables grow with every sign-in, logout, failed sign-in and idempotent command, and
would grow for ever:

- auth.refresh_tokens: a token past its expiry refreshes nothing, and presented again
  it is refused whether its row is there or not; reuse detection needs only the tokens
  that could still be presented.
- auth.revoked_access_tokens: a revoked jti matters only until its token expires.
- auth.login_failures: a window of failed sign-ins that has ended counts for nothing.
- api.idempotent_responses: answers are kept for the retention (24 hours by default).
  A retry after that still appends nothing: the event store keeps every key with its
  events for good, and the command layer answers the retry with the first result, read
  back from the log (commands/runtime.py); only the stored body is gone.

Each API process runs a pass every `interval_s` (jittered, so that workers started
together do not run together). A pass deletes each table's dead rows oldest first, in
batches of `batch_rows`, each batch its own short transaction found through an index
(migrations 0020 and 0022): never a long transaction or many locks at once. Each batch
takes a transaction-level advisory lock first; with several workers or replicas one
deletes and the others, finding the lock taken, leave the pass to it. The clock is the
database's, the one that stamped the rows.
"""

from __future__ import annotations

import asyncio
import logging
import random
from datetime import timedelta
from typing import Final, NamedTuple

import asyncpg
from prometheus_client import Counter

from api.credentials import LOCKOUT_WINDOW

BATCH_ROWS_DEFAULT: Final = 5_000
LOCK_CLASS: Final = 0x1ED6E9
STATEMENT_TIMEOUT_S: Final = 30.0

logger = logging.getLogger(__name__)

DELETED: Final = Counter(
    "ledger_housekeeping_deleted_total",
    "Rows deleted by housekeeping, by table (expired tokens, ended lockout windows, "
    "idempotent answers past their retention).",
    ["table"],
)


class Purge(NamedTuple):
    """A table's dead rows: those whose `column` is older than `age` (from settings)."""

    table: str
    key: str
    column: str

    def statement(self) -> str:
        return (
            f"DELETE FROM {self.table} WHERE ({self.key}) IN ("
            f"SELECT {self.key} FROM {self.table} WHERE {self.column} < now() - $1::interval "
            f"ORDER BY {self.column} LIMIT $2)"
        )


REFRESH_TOKENS: Final = Purge("auth.refresh_tokens", "token_hash", "expires_at")
REVOKED_ACCESS_TOKENS: Final = Purge("auth.revoked_access_tokens", "jti", "expires_at")
LOGIN_FAILURES: Final = Purge("auth.login_failures", "email", "window_start_at")
IDEMPOTENT_RESPONSES: Final = Purge("api.idempotent_responses", "user_id, key", "recorded_at")


class Housekeeping:
    """Deletes the API's dead rows, a pass at a time."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        idempotency_retention: timedelta,
        batch_rows: int = BATCH_ROWS_DEFAULT,
    ) -> None:
        assert idempotency_retention > timedelta(0)
        assert batch_rows >= 1
        self.pool = pool
        self.batch_rows = batch_rows
        self.purges: tuple[tuple[Purge, timedelta], ...] = (
            (REFRESH_TOKENS, timedelta(0)),
            (REVOKED_ACCESS_TOKENS, timedelta(0)),
            (LOGIN_FAILURES, LOCKOUT_WINDOW),
            (IDEMPOTENT_RESPONSES, idempotency_retention),
        )

    async def run_pass(self) -> dict[str, int] | None:
        """Delete every table's dead rows; the rows deleted by table, or None if another
        process holds the lock (it is running a pass)."""
        deleted: dict[str, int] = {}
        for purge, age in self.purges:
            count = await self._purge(purge, age)
            if count is None:
                return None
            deleted[purge.table] = count
        return deleted

    async def _purge(self, purge: Purge, age: timedelta) -> int | None:
        statement = purge.statement()
        total = 0
        while True:
            async with self.pool.acquire() as connection, connection.transaction():
                taken = await connection.fetchval(
                    "SELECT pg_try_advisory_xact_lock($1, 0)",
                    LOCK_CLASS,
                    timeout=STATEMENT_TIMEOUT_S,
                )
                if not taken:
                    return None
                status = await connection.execute(
                    statement, age, self.batch_rows, timeout=STATEMENT_TIMEOUT_S
                )
            count = int(status.rsplit(" ", 1)[1])  # "DELETE <n>"
            if count:
                DELETED.labels(purge.table).inc(count)
            total += count
            if count < self.batch_rows:
                return total

    async def run(self, interval_s: float) -> None:
        """A pass every `interval_s` or so, until cancelled; a failed pass is logged and
        the next one comes at its time."""
        assert interval_s > 0
        while True:
            await asyncio.sleep(interval_s * random.uniform(0.5, 1.0))
            try:
                deleted = await self.run_pass()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as error:
                logger.warning("housekeeping pass failed: %r", error)
                continue
            if deleted and any(deleted.values()):
                logger.info(
                    "housekeeping deleted %s",
                    ", ".join(f"{count} from {table}" for table, count in deleted.items()),
                )
