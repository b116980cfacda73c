"""Apply a batch of events to one projection: rows and checkpoint in one transaction.

The checkpoint is the projection's last applied `sequence`. In the batch's transaction
the checkpoint row is locked, events at or below it are skipped (a redelivery changes
nothing), the rest are applied in sequence order, and the checkpoint moves to the last.
Sequences are gapless, so the next event must be exactly checkpoint + 1: a batch that
starts beyond it raises SequenceGapError and writes nothing (the caller fills the gap
from the log). The row lock also serialises two appliers of one projection.

Both the JetStream worker and the rebuild use this; they differ only in the schema, set
as the transaction's search_path: `read` (live) or a rebuild's scratch schema.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Final

import asyncpg
import msgspec

from ledger.domain import event_type
from projections.base import STATEMENT_TIMEOUT_S, LoggedEvent, Projection

LIVE_SCHEMA: Final = "read"
BATCH_MAX: Final = 10_000
_SCHEMA_NAME: Final = re.compile(r"[a-z_][a-z0-9_]{0,62}")

# Creates the row on first use and locks it for the rest of the transaction.
_LOCK_CHECKPOINT_SQL: Final = """
INSERT INTO checkpoints AS c (projection) VALUES ($1)
ON CONFLICT (projection) DO UPDATE SET projection = c.projection
RETURNING c.sequence"""

_MOVE_CHECKPOINT_SQL: Final = """
UPDATE checkpoints SET sequence = $2, updated_at = now(),
    failing = false, last_error = NULL, parked_sequence = NULL
WHERE projection = $1"""


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


def check_schema(schema: str) -> str:
    assert _SCHEMA_NAME.fullmatch(schema), f"not a plain schema name: {schema!r}"
    return schema


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
) -> Applied:
    """Apply `events` (any order, duplicates allowed) past the checkpoint, in one transaction."""
    assert len(events) <= BATCH_MAX, len(events)
    ordered = sorted(events, key=lambda logged: logged.sequence)
    topics = projection.topics
    async with connection.transaction():
        await connection.execute(f"SET LOCAL search_path TO {check_schema(schema)}")
        checkpoint = int(
            await connection.fetchval(
                _LOCK_CHECKPOINT_SQL, projection.name, timeout=STATEMENT_TIMEOUT_S
            )
        )
        last, applied = checkpoint, 0
        for logged in ordered:
            if logged.sequence <= last:
                continue
            if logged.sequence != last + 1:
                raise SequenceGapError(projection.name, last + 1, logged.sequence)
            last = logged.sequence
            if logged.topic not in topics:
                continue
            event = msgspec.json.decode(logged.data, type=event_type(logged.topic))
            handler = projection.handlers[type(event)]
            await handler(connection, event, logged.meta)
            applied += 1
        if last > checkpoint:
            await connection.execute(
                _MOVE_CHECKPOINT_SQL, projection.name, last, timeout=STATEMENT_TIMEOUT_S
            )
    return Applied(checkpoint, last, applied)
