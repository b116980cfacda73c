"""Read-your-writes: wait, bounded, until the projections of a query have applied an event.

A command answers with a consistency token, its last event's (tx, position)
(api/consistency.py). A query given `consistent_with=TOKEN` first asks PostgreSQL, in one
statement, for that event's `sequence` (ledger.sequence; NULL while the relay has not
numbered it yet) and the checkpoints of the projections the route reads. When every one
of them is at or past the sequence, the query runs at once. Otherwise the request waits
on the process's `ProjectionWatcher`, at most `Settings.consistency_wait_s` (2 s), and
then answers 503 CONSISTENCY_TIMEOUT with Retry-After: the write is in the log, the read
model is behind.

The watcher holds one LISTEN connection per API process on projections.notify.CHANNEL:
a worker's notice after each committed batch ("orders:1234") updates the checkpoints it
knows and wakes the waiters it satisfies, with no query. Waiters whose event had no
sequence yet are resolved together, one query for all of them, after any notice (a
projection cannot apply an event before it is numbered). While anyone waits, a slow
poll (every POLL_INTERVAL_S, one query for all waiters) covers lost notices: a listener
reconnecting, a worker that died between its commit and its notice, a rebuild's swap.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from typing import Final

import asyncpg

from ledger.store import Checkpoint
from projections import notify
from projections.base import STATEMENT_TIMEOUT_S

POLL_INTERVAL_S: Final = 0.5
WAITERS_MAX: Final = 10_000
RECONNECT_INTERVAL_S: Final = 1.0

log = logging.getLogger(__name__)

# The token's event (if the token names one) with its sequence, and the checkpoints.
_EVENT_SQL: Final = """
SELECT s.sequence,
       ARRAY(SELECT c.projection FROM read.checkpoints c WHERE c.projection = ANY($3::text[])
             ORDER BY c.projection) AS projections,
       ARRAY(SELECT c.sequence FROM read.checkpoints c WHERE c.projection = ANY($3::text[])
             ORDER BY c.projection) AS checkpoints
FROM ledger.events e LEFT JOIN ledger.sequence s ON s.position = e.notification_id
WHERE e.notification_id = $1 AND e.tx = $2::xid8"""


class WatcherClosedError(Exception):
    """Raised into waiters when the app stops: they answer as if the wait timed out."""


class Waiter:
    """One request waiting for `projections` to reach the sequence of the event at `position`."""

    __slots__ = ("done", "position", "projections", "sequence")

    def __init__(self, position: int, sequence: int | None, projections: tuple[str, ...]) -> None:
        self.position = position
        self.sequence = sequence
        self.projections = projections
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()


class ProjectionWatcher:
    """The checkpoints this process knows, kept fresh by NOTIFY, and who waits on them."""

    def __init__(
        self, database_url: str, pool: asyncpg.Pool, *, poll_interval_s: float = POLL_INTERVAL_S
    ) -> None:
        assert poll_interval_s > 0, poll_interval_s
        self.database_url = database_url
        self.pool = pool
        self.poll_interval_s = poll_interval_s
        self.checkpoints: dict[str, int] = {}
        self.waiters: set[Waiter] = set()
        self._poked = asyncio.Event()
        self._listener: asyncpg.Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.notices = 0  # how many notices arrived so far (see `wait`'s notices_seen)

    async def start(self) -> None:
        assert self._task is None, "started twice"
        await self._listen()
        self._task = asyncio.create_task(self._run(), name="projection-watcher")

    async def close(self) -> None:
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for waiter in self.waiters:
            if not waiter.done.done():
                waiter.done.set_exception(WatcherClosedError())
        if self._listener is not None:
            with contextlib.suppress(Exception):
                await self._listener.close(timeout=STATEMENT_TIMEOUT_S)

    def learn(self, projections: Iterable[str], checkpoints: Iterable[int]) -> None:
        """Checkpoints read elsewhere (they only ever move forward)."""
        for name, sequence in zip(projections, checkpoints, strict=True):
            if sequence > self.checkpoints.get(name, 0):
                self.checkpoints[name] = sequence

    async def wait(
        self,
        position: int,
        sequence: int | None,
        projections: tuple[str, ...],
        timeout_s: float,
        *,
        notices_seen: int | None = None,
    ) -> bool:
        """True once every projection named has applied the event; False after `timeout_s`
        (or at once when WAITERS_MAX requests already wait, or the watcher is closing).

        `notices_seen` is `notices` when the caller read `sequence`: an event found not yet
        numbered may have been numbered and applied, its notice handled, while that read
        was in flight; then the waiter looks its sequence up at once rather than at the
        next notice or poll."""
        if len(self.waiters) >= WAITERS_MAX or self._closing:
            return False
        waiter = Waiter(position, sequence, projections)
        self.waiters.add(waiter)
        try:
            self._resolve(waiter)
            if sequence is None and notices_seen is not None and notices_seen != self.notices:
                self._poked.set()
            async with asyncio.timeout(timeout_s):
                await waiter.done
        except (TimeoutError, WatcherClosedError):
            return False
        finally:
            self.waiters.discard(waiter)
        return True

    def _resolve(self, waiter: Waiter) -> None:
        if waiter.done.done() or waiter.sequence is None:
            return
        target = waiter.sequence
        if all(self.checkpoints.get(name, 0) >= target for name in waiter.projections):
            waiter.done.set_result(None)

    def _on_notice(
        self, connection: asyncpg.Connection, pid: int, channel: str, payload: str
    ) -> None:
        parsed = notify.parse(payload)
        if parsed is None:
            return
        self.notices += 1
        self.learn([parsed[0]], [parsed[1]])
        unsequenced = False
        for waiter in self.waiters:
            self._resolve(waiter)
            unsequenced = unsequenced or waiter.sequence is None
        if unsequenced:
            self._poked.set()

    async def _listen(self) -> None:
        connection = await asyncpg.connect(self.database_url, timeout=STATEMENT_TIMEOUT_S)
        try:
            await connection.add_listener(notify.CHANNEL, self._on_notice)
        except BaseException:
            await connection.close(timeout=STATEMENT_TIMEOUT_S)
            raise
        self._listener = connection

    async def _run(self) -> None:
        """Refresh after notices that leave waiters without a sequence, and poll while
        anyone waits; keep the LISTEN connection up."""
        while True:
            polled = False
            try:
                async with asyncio.timeout(self.poll_interval_s):
                    await self._poked.wait()
            except TimeoutError:
                polled = True
            self._poked.clear()
            try:
                if self._listener is None or self._listener.is_closed():
                    self._listener = None
                    await self._listen()
                    polled = True  # Notices may have been missed while it was down.
                if self.waiters:
                    await self._refresh(with_checkpoints=polled)
            # Whatever fails, the loop goes on: waiters still have their own timeouts.
            except Exception as error:
                log.warning("projection watcher: %r; retrying", error)
                await asyncio.sleep(RECONNECT_INTERVAL_S)

    async def _refresh(self, *, with_checkpoints: bool) -> None:
        """One query: the sequences of the waiters' events not numbered yet, and (when
        polling) every checkpoint; then wake whoever is satisfied."""
        positions = [waiter.position for waiter in self.waiters if waiter.sequence is None]
        row = await self.pool.fetchrow(
            "SELECT ARRAY(SELECT position FROM ledger.sequence WHERE position = ANY($1::bigint[]) "
            "ORDER BY position) AS positions, "
            "ARRAY(SELECT sequence FROM ledger.sequence WHERE position = ANY($1::bigint[]) "
            "ORDER BY position) AS sequences, "
            "ARRAY(SELECT projection FROM read.checkpoints WHERE $2::boolean ORDER BY projection) "
            "AS projections, "
            "ARRAY(SELECT sequence FROM read.checkpoints WHERE $2::boolean ORDER BY projection) "
            "AS checkpoints",
            positions,
            with_checkpoints,
            timeout=STATEMENT_TIMEOUT_S,
        )
        assert row is not None
        numbered = dict(zip(row["positions"], row["sequences"], strict=True))
        self.learn(row["projections"], row["checkpoints"])
        for waiter in list(self.waiters):
            if waiter.sequence is None:
                waiter.sequence = numbered.get(waiter.position)
            self._resolve(waiter)


class UnknownEventError(LookupError):
    """Raised when a consistency token decodes but names no event of this ledger."""


async def settle(
    watcher: ProjectionWatcher, token: Checkpoint, projections: tuple[str, ...], timeout_s: float
) -> bool:
    """True when `projections` have applied the token's event, within `timeout_s`."""
    notices_seen = watcher.notices
    row = await watcher.pool.fetchrow(
        _EVENT_SQL, token.position, token.tx, list(projections), timeout=STATEMENT_TIMEOUT_S
    )
    if row is None:
        raise UnknownEventError(f"no event at position {token.position} in transaction {token.tx}")
    watcher.learn(row["projections"], row["checkpoints"])
    sequence: int | None = row["sequence"]
    if sequence is not None and all(
        watcher.checkpoints.get(name, 0) >= sequence for name in projections
    ):
        return True
    return await watcher.wait(
        token.position, sequence, projections, timeout_s, notices_seen=notices_seen
    )
