"""The relay leader's numbering, done in a test's own time (the e2e app runs no relay)."""

from __future__ import annotations

import asyncpg

from ledger import sequencer


async def sequence_all(database_url: str, *, digest_every: int = 1_000) -> int:
    """Number every committed event as the relay would; return the last sequence."""
    connection = await asyncpg.connect(database_url)
    try:
        while True:
            cursor = await sequencer.load_cursor(connection)
            pending = await sequencer.read_unsequenced(connection, cursor, limit=1_000)
            if not pending:
                return cursor.sequence
            batch = sequencer.assign(cursor, pending, digest_every=digest_every)
            await sequencer.record(connection, batch)
    finally:
        await connection.close()
