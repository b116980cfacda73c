"""The log in global order, as projections read it: ledger.sequence joined to ledger.events.

Only sequenced events are read (the relay's sequencer numbers them in (tx, position)
order), so what a projection reads from here is exactly what JetStream delivers, with the
same numbers. Every read is one bounded keyset query on ledger.sequence's primary key.
"""

from __future__ import annotations

from typing import Final

import asyncpg
import msgspec

from projections.base import STATEMENT_TIMEOUT_S, LoggedEvent

READ_BATCH_MAX: Final = 10_000

_READ_SQL: Final = """
SELECT s.sequence, e.originator_id AS stream_id, e.stream_type,
       e.originator_version AS version, e.topic, e.recorded_at, e.state AS data
FROM ledger.sequence s JOIN ledger.events e ON e.notification_id = s.position
WHERE s.sequence > $1 AND s.sequence <= $2
ORDER BY s.sequence LIMIT $3"""


async def read_after(
    connection: asyncpg.Connection, after: int, *, up_to: int = 2**62, limit: int
) -> list[LoggedEvent]:
    """At most `limit` events with sequence in (after, up_to], in sequence order."""
    assert 1 <= limit <= READ_BATCH_MAX, limit
    rows = await connection.fetch(_READ_SQL, after, up_to, limit, timeout=STATEMENT_TIMEOUT_S)
    return [
        LoggedEvent(
            sequence=row[0],
            stream_id=row[1],
            stream_type=row[2],
            version=row[3],
            topic=row[4],
            recorded_at=row[5],
            data=msgspec.Raw(bytes(row[6])),
        )
        for row in rows
    ]


async def head(connection: asyncpg.Connection) -> int:
    """The last sequence given so far (0 when nothing is sequenced)."""
    value = await connection.fetchval(
        "SELECT sequence FROM ledger.sequence ORDER BY sequence DESC LIMIT 1",
        timeout=STATEMENT_TIMEOUT_S,
    )
    return 0 if value is None else int(value)
