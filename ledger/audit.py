"""A full verification of the log, range by range: `ledger audit verify`.

Two walks, each in bounded batches on one connection:
- the global chain from a sequence to the sequencer's head (`sequencer.verify_range` per
  range: every numbered event's content against its hash, commit order, the global hash
  chain and every digest);
- every stream's chain, in (stream, version) order over the unique index, so each stream
  is read once and consecutively: versions 1..n without a gap, each prev_hash the hash
  before it, each content its hash. This also covers events the relay has not numbered.
The API's `/audit/verify` does one bounded range of either per request.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final
from uuid import UUID

import asyncpg
import msgspec

from ledger import chain, sequencer
from ledger.store import _EVENT_COLUMNS, RecordedEvent, _record

RANGE_SEQUENCES: Final = 10_000
STREAM_BATCH: Final = 10_000
STATEMENT_TIMEOUT_S: Final = 60.0

# The sequencer's cursor, or the last row if that is further: a deleted last row of
# ledger.sequence then shows as a missing sequence rather than a shorter log.
_HEAD_SQL: Final = (
    "SELECT greatest((SELECT sequenced FROM ledger.relay_state WHERE singleton), "
    "(SELECT coalesce(max(sequence), 0) FROM ledger.sequence))"
)
_STREAMS_SQL: Final = (
    f"SELECT {_EVENT_COLUMNS} FROM ledger.events "
    "WHERE (originator_id, originator_version) > ($1, $2) "
    "ORDER BY originator_id, originator_version LIMIT $3"
)


class StreamsVerification(msgspec.Struct, frozen=True):
    """How many streams and events checked out, and the first break (stream, version)."""

    streams: int
    events: int
    stream_id: UUID | None
    broken: chain.Break | None

    @property
    def ok(self) -> bool:
        return self.broken is None


async def head_sequence(connection: asyncpg.Connection) -> int:
    """The last sequence numbered (the sequencer's count, or a further row if any)."""
    head: int = await connection.fetchval(_HEAD_SQL, timeout=STATEMENT_TIMEOUT_S)
    return head


async def verify_log(
    connection: asyncpg.Connection,
    *,
    from_sequence: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> sequencer.GlobalVerification:
    """The global chain from `from_sequence` to the head, range by range."""
    assert from_sequence >= 1, from_sequence
    head = await head_sequence(connection)
    checked, global_hash, start = 0, sequencer.GENESIS, from_sequence
    while start <= head:
        last = min(start + RANGE_SEQUENCES - 1, head)
        part = await sequencer.verify_range(connection, start, last)
        checked += part.checked
        global_hash = part.global_hash
        if part.broken is not None:
            return sequencer.GlobalVerification(from_sequence, checked, global_hash, part.broken)
        if progress is not None:
            progress(last, head)
        start = last + 1
    return sequencer.GlobalVerification(from_sequence, checked, global_hash, None)


async def verify_streams(
    connection: asyncpg.Connection, *, progress: Callable[[int], None] | None = None
) -> StreamsVerification:
    """Every stream's chain from version 1, in one pass over (stream, version)."""
    streams = events = 0
    current: UUID | None = None
    previous_hash, next_version = chain.GENESIS, 1
    after: tuple[UUID, int] = (UUID(int=0), 0)
    while True:
        rows = await connection.fetch(
            _STREAMS_SQL, after[0], after[1], STREAM_BATCH, timeout=STATEMENT_TIMEOUT_S
        )
        for run in _runs([_record(row) for row in rows]):
            stream_id = run[0].stream_id
            if stream_id != current:
                current, previous_hash, next_version = stream_id, chain.GENESIS, 1
                streams += 1
            result = chain.verify_chain(
                stream_id, run, first_version=next_version, previous_hash=previous_hash
            )
            events += result.checked
            if result.broken is not None:
                return StreamsVerification(streams, events, stream_id, result.broken)
            previous_hash, next_version = run[-1].hash, run[-1].version + 1
        if progress is not None:
            progress(events)
        if len(rows) < STREAM_BATCH:
            return StreamsVerification(streams, events, None, None)
        after = (rows[-1]["stream_id"], rows[-1]["version"])


def _runs(events: list[RecordedEvent]) -> list[list[RecordedEvent]]:
    """Consecutive events of the same stream, grouped."""
    runs: list[list[RecordedEvent]] = []
    for event in events:
        if runs and runs[-1][0].stream_id == event.stream_id:
            runs[-1].append(event)
        else:
            runs.append([event])
    return runs
