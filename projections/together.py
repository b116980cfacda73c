"""Apply a worker process's batch to every projection it leads in one transaction.

A worker process's batch is shared by all the projections it leads (ADR 0015). Applied
projection by projection, each paid a transaction of its own: BEGIN, SET LOCAL, the
checkpoint's lock, its move and COMMIT, on a connection of its own. Here all of them go
in one transaction on one connection (ADR 0015's addendum):

    BEGIN; SET LOCAL ...                  one round trip
    lock every checkpoint row             one statement, rows locked in name order
    each projection's rows                engine.apply_rows, as apply_batch writes them
    move every checkpoint that moved      one statement, each move announced at the commit
    COMMIT

Each projection keeps its own checkpoint, and so its own answer to "what is applied":
events at or below it are skipped, the next must be checkpoint + 1. Anything that goes
wrong (a gap before the batch, a poison event, a missing checkpoint row, a timeout) rolls
all of it back and raises: the caller then applies the batch projection by projection
(projections/runner.py), where gaps are filled from the log and a poison event parks
only its own projection, the others' work committed in transactions of their own.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Final

import asyncpg

from projections.base import LIVE_SCHEMA, STATEMENT_TIMEOUT_S, LoggedEvent, Projection
from projections.engine import BATCH_MAX, MOVED_SET, Applied, apply_rows
from projections.notify import announcing

# One round trip: the simple query protocol runs the three in order. As in apply_batch,
# the commit does not wait for the WAL flush (a lost commit is a gap filled from the log).
_BEGIN_SQL: Final = (
    f"BEGIN; SET LOCAL search_path TO {LIVE_SCHEMA}; SET LOCAL synchronous_commit = off"
)

# Rows are locked in name order, as skip_unhandled locks them: two transactions over
# overlapping sets of projections cannot deadlock. FOR UPDATE only marks the rows (the
# per-projection lock, an upsert, wrote a new version of each row each time).
_LOCK_SQL: Final = f"""
SELECT projection, sequence FROM {LIVE_SCHEMA}.checkpoints
WHERE projection = ANY($1::text[]) ORDER BY projection FOR UPDATE"""

_MOVE_SQL: Final = announcing(
    f"""
UPDATE {LIVE_SCHEMA}.checkpoints AS c SET {MOVED_SET.format(sequence="m.sequence")}
FROM unnest($1::text[], $2::bigint[]) AS m (projection, sequence)
WHERE c.projection = m.projection
RETURNING c.projection, c.sequence""",
    projection="moved.projection",
)


class CheckpointMissingError(Exception):
    """Raised when a projection has no checkpoint row yet (apply_batch makes it)."""


async def apply_together(
    connection: asyncpg.Connection,
    projections: Sequence[Projection],
    events: Sequence[LoggedEvent],
) -> dict[str, Applied]:
    """Apply `events` (any order, duplicates allowed) past each projection's checkpoint,
    all in one transaction on the live schema, every checkpoint move announced at the
    commit; what each did, by name. On any error nothing is written and it is raised."""
    assert projections, "no projection to apply"
    assert len(events) <= BATCH_MAX, len(events)
    names = [projection.name for projection in projections]
    assert len(set(names)) == len(names), names
    ordered = sorted(events, key=lambda logged: logged.sequence)
    applied: dict[str, Applied] = {}
    async with _transaction(connection):
        rows = await connection.fetch(_LOCK_SQL, names, timeout=STATEMENT_TIMEOUT_S)
        checkpoints = {row[0]: int(row[1]) for row in rows}
        missing = [name for name in names if name not in checkpoints]
        if missing:
            raise CheckpointMissingError(f"no checkpoint row for {', '.join(missing)}")
        for projection in projections:
            before = checkpoints[projection.name]
            after, count = await apply_rows(connection, projection, ordered, before, LIVE_SCHEMA)
            applied[projection.name] = Applied(before, after, count)
        moved = [(name, item.after) for name, item in applied.items() if item.after > item.before]
        if moved:
            await connection.fetch(
                _MOVE_SQL,
                [name for name, _ in moved],
                [sequence for _, sequence in moved],
                timeout=STATEMENT_TIMEOUT_S,
            )
    return applied


def closed(connection: asyncpg.Connection) -> bool:
    """Whether the connection is gone: closed, or (a pool's) detached from its proxy by
    the pool once the server ended it, which makes every call on it raise."""
    try:
        return connection.is_closed()
    except asyncpg.InterfaceError:
        return True


@contextlib.asynccontextmanager
async def _transaction(connection: asyncpg.Connection) -> AsyncIterator[None]:
    """BEGIN with the SET LOCALs in one round trip; COMMIT, or ROLLBACK on any error. A
    connection left in the transaction (its ROLLBACK failed) is terminated, so its next
    user finds it closed rather than inside this transaction."""
    assert not connection.is_in_transaction(), "already in a transaction"
    await connection.execute(_BEGIN_SQL, timeout=STATEMENT_TIMEOUT_S)
    try:
        yield
        await connection.execute("COMMIT", timeout=STATEMENT_TIMEOUT_S)
    except BaseException:
        # After a failed COMMIT the transaction is over already; ROLLBACK only warns.
        with contextlib.suppress(Exception):
            await connection.execute("ROLLBACK", timeout=STATEMENT_TIMEOUT_S)
        if not closed(connection) and connection.is_in_transaction():
            connection.terminate()
        raise
