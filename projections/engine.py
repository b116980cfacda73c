"""Apply a batch of events to one projection: rows and checkpoint in one transaction.

The checkpoint is the projection's last applied `sequence`. In the batch's transaction
the checkpoint row is locked, events at or below it are skipped (a redelivery changes
nothing), the rest are applied in sequence order, and the checkpoint moves to the last.
Sequences are gapless, so the next event must be exactly checkpoint + 1: a batch that
starts beyond it raises SequenceGapError and writes nothing (the caller fills the gap
from the log). The row lock also serialises two appliers of one projection.

Both the JetStream worker and the tests use this, on schema `read` (live) or another, set
as the transaction's search_path. A batch of FOLD_FROM events or more to apply is folded
in memory and each row written once, as a rebuild does (projections/folding.py); a
smaller one runs one statement per event. A batch holding no event the projection handles
(most batches, for most projections) only moves the checkpoint, in one statement that
checks the same things (`_skip`; `skip_unhandled` does it for several projections at
once, since a worker process's batch is shared by all it leads). With `announce` (the
worker), the new checkpoint is sent by the statement that moves it, at the commit
(projections.notify.announcing). The worker applies a batch to all the projections it
leads in one transaction (projections/together.py), each projection's rows written by
`apply_rows`, as here.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Final

import asyncpg
import msgspec

from ledger.domain import event_type
from projections.base import (
    LIVE_SCHEMA,
    STATEMENT_TIMEOUT_S,
    LoggedEvent,
    Projection,
    check_schema,
)
from projections.folding import fold_batch
from projections.notify import announcing

BATCH_MAX: Final = 10_000
# From this many events to apply, a batch is folded in memory and each row it touches is
# written once (projections/batch.py, the rebuild's way); below, one statement per event.
FOLD_FROM: Final = 8

# Creates the row on first use and locks it for the rest of the transaction.
_LOCK_CHECKPOINT_SQL: Final = """
INSERT INTO checkpoints AS c (projection) VALUES ($1)
ON CONFLICT (projection) DO UPDATE SET projection = c.projection
RETURNING c.sequence"""

# What moving a checkpoint sets (a move also clears a parked projection's failure).
MOVED_SET: Final = """sequence = {sequence}, updated_at = now(),
    failing = false, last_error = NULL, parked_sequence = NULL"""

_MOVE_CHECKPOINT_SQL: Final = f"""
UPDATE checkpoints SET {MOVED_SET.format(sequence="$2")}
WHERE projection = $1"""

_ANNOUNCE_MOVE_SQL: Final = announcing(_MOVE_CHECKPOINT_SQL + "\nRETURNING sequence")

# A batch of events the projection does not handle only moves its checkpoint: one
# statement, when the batch starts at or before checkpoint + 1 and runs on without a gap.
_SKIP_SQL: Final = f"""
UPDATE {{schema}}.checkpoints AS c SET {MOVED_SET.format(sequence="$3")}
FROM (SELECT sequence FROM {{schema}}.checkpoints WHERE projection = $1 FOR UPDATE) AS b
WHERE c.projection = $1 AND b.sequence BETWEEN $2 - 1 AND $3 - 1
RETURNING b.sequence AS before, c.sequence"""


# The same for several projections that handle none of a batch, in one statement: a
# worker process's batch is shared by every projection it leads (projections/worker.py).
# Rows are locked in name order, so two such statements over overlapping sets cannot
# deadlock.
_SKIP_MANY_SQL: Final = announcing(
    f"""
UPDATE {LIVE_SCHEMA}.checkpoints AS c SET {MOVED_SET.format(sequence="$3")}
FROM (SELECT projection, sequence FROM {LIVE_SCHEMA}.checkpoints
      WHERE projection = ANY($1::text[]) ORDER BY projection FOR UPDATE) AS b
WHERE c.projection = b.projection AND b.sequence BETWEEN $2 - 1 AND $3 - 1
RETURNING c.projection, b.sequence AS before, c.sequence""",
    projection="moved.projection",
)


@functools.lru_cache(maxsize=64)
def _skip_sql(schema: str, announce: bool) -> str:
    skip = _SKIP_SQL.format(schema=check_schema(schema))
    return announcing(skip) if announce else skip


class SequenceGapError(Exception):
    """Raised when a batch's first new event is not the one after the checkpoint."""

    def __init__(self, projection: str, expected: int, found: int) -> None:
        super().__init__(f"{projection}: expected sequence {expected}, got {found}")
        self.projection = projection
        self.expected = expected
        self.found = found


class Applied(msgspec.Struct, frozen=True):
    """What a batch did: the checkpoint before and after, and how many events it applied
    (events the projection does not handle move the checkpoint but are not counted)."""

    before: int
    after: int
    applied: int


async def read_checkpoint(
    connection: asyncpg.Connection, name: str, *, schema: str = LIVE_SCHEMA
) -> int:
    """The projection's checkpoint in `schema` (0 before its first batch)."""
    value = await connection.fetchval(
        f"SELECT sequence FROM {check_schema(schema)}.checkpoints WHERE projection = $1",
        name,
        timeout=STATEMENT_TIMEOUT_S,
    )
    return 0 if value is None else int(value)


async def apply_batch(
    connection: asyncpg.Connection,
    projection: Projection,
    events: Sequence[LoggedEvent],
    *,
    schema: str = LIVE_SCHEMA,
    announce: bool = False,
) -> Applied:
    """Apply `events` (any order, duplicates allowed) past the checkpoint, in one transaction.

    With `announce`, the new checkpoint is notified at the commit (notify.announcing).
    """
    assert len(events) <= BATCH_MAX, len(events)
    ordered = sorted(events, key=lambda logged: logged.sequence)
    topics = projection.topics
    if ordered and not any(logged.topic in topics for logged in ordered):
        skipped = await _skip(connection, projection.name, ordered, schema, announce)
        if skipped is not None:
            return skipped
    async with connection.transaction():
        # The commit does not wait for its WAL to reach disk. A crash of PostgreSQL may then
        # lose the last batches' rows and checkpoint together, after the worker acked
        # them; the next batch then starts past the checkpoint and the worker fills the gap
        # from the log (SequenceGapError). Waiting for the flush cost 10-50 ms a batch on a
        # busy machine, once per projection: most of a worker's lag.
        await connection.execute(
            f"SET LOCAL search_path TO {check_schema(schema)}; SET LOCAL synchronous_commit = off"
        )
        checkpoint = int(
            await connection.fetchval(
                _LOCK_CHECKPOINT_SQL, projection.name, timeout=STATEMENT_TIMEOUT_S
            )
        )
        last, applied = await apply_rows(connection, projection, ordered, checkpoint, schema)
        if last > checkpoint:
            move = _ANNOUNCE_MOVE_SQL if announce else _MOVE_CHECKPOINT_SQL
            await connection.execute(move, projection.name, last, timeout=STATEMENT_TIMEOUT_S)
    return Applied(checkpoint, last, applied)


async def apply_rows(
    connection: asyncpg.Connection,
    projection: Projection,
    ordered: Sequence[LoggedEvent],
    checkpoint: int,
    schema: str,
) -> tuple[int, int]:
    """Write the rows of the `ordered` events past `checkpoint`, in the caller's transaction
    (which locked the checkpoint row and moves it): the last sequence reached and how many
    events the projection handled. SequenceGapError, before any row is written, when an
    event past the checkpoint does not follow the one before it."""
    topics = projection.topics
    last, handled = checkpoint, []
    for logged in ordered:
        if logged.sequence <= last:
            continue
        if logged.sequence != last + 1:
            raise SequenceGapError(projection.name, last + 1, logged.sequence)
        last = logged.sequence
        if logged.topic in topics:
            handled.append(logged)
    if len(handled) >= FOLD_FROM:
        await fold_batch(connection, projection, handled, check_schema(schema))
    for logged in handled if len(handled) < FOLD_FROM else ():
        event = msgspec.json.decode(logged.data, type=event_type(logged.topic))
        handler = projection.handlers[type(event)]
        await handler(connection, event, logged.meta)
    return last, len(handled)


async def _skip(
    connection: asyncpg.Connection,
    name: str,
    ordered: Sequence[LoggedEvent],
    schema: str,
    announce: bool,
) -> Applied | None:
    """Move the checkpoint past a batch of events the projection does not handle, in one
    statement; None when that cannot be done so (a gap before or within the batch, the
    checkpoint already past it, no checkpoint row yet): apply_batch's transaction decides.
    """
    first, last = ordered[0].sequence, ordered[-1].sequence
    if last - first + 1 != len({logged.sequence for logged in ordered}):
        return None
    statement = _skip_sql(schema, announce)
    moved = await connection.fetch(statement, name, first, last, timeout=STATEMENT_TIMEOUT_S)
    return Applied(moved[0]["before"], last, 0) if moved else None


async def skip_unhandled(
    connection: asyncpg.Connection, projections: Sequence[Projection], events: Sequence[LoggedEvent]
) -> dict[str, Applied]:
    """Move, in one statement on the live schema and announced, the checkpoints of those
    `projections` that handle none of `events` and can be moved past them as apply_batch's
    skip would; what each did, by name. The others (a gap, a redelivery, no checkpoint
    yet, or an event they handle) are left to apply_batch."""
    ordered = sorted(events, key=lambda logged: logged.sequence)
    topics = {logged.topic for logged in ordered}
    names = [item.name for item in projections if item.topics.isdisjoint(topics)]
    if not names or not ordered:
        return {}
    first, last = ordered[0].sequence, ordered[-1].sequence
    if last - first + 1 != len({logged.sequence for logged in ordered}):
        return {}
    moved = await connection.fetch(_SKIP_MANY_SQL, names, first, last, timeout=STATEMENT_TIMEOUT_S)
    return {row["projection"]: Applied(row["before"], last, 0) for row in moved}
