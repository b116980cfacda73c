"""The "a projection moved" notice: workers send it, the API's read-your-writes waits on it.

The worker's statement that moves a projection's checkpoint also sends
`NOTIFY ledger_projected, '<projection>:<checkpoint>'` (`announcing`), so listeners hear
it at the commit of the batch's rows and checkpoint, with no round trip or transaction of
its own; appends never notify. It is only a wake-up: a lost notice (a listener
reconnecting) is found by the listener's slow poll of read.checkpoints.
"""

from __future__ import annotations

from typing import Final

import asyncpg

from projections.base import STATEMENT_TIMEOUT_S

CHANNEL: Final = "ledger_projected"
_PAYLOAD_LENGTH_MAX: Final = 100


async def notify_projected(connection: asyncpg.Connection, projection: str, sequence: int) -> None:
    """Tell listeners that `projection` has applied everything up to `sequence`."""
    assert sequence >= 1, sequence
    await connection.execute(
        "SELECT pg_notify($1, $2)", CHANNEL, f"{projection}:{sequence}", timeout=STATEMENT_TIMEOUT_S
    )


def announcing(statement: str, projection: str = "$1") -> str:
    """`statement` (an UPDATE of checkpoints RETURNING their new `sequence`), notifying
    each move at the commit; returns what it returned. `projection` is the SQL of the
    moved projection's name: its parameter, or `moved.projection` when the statement
    moves several and returns their names."""
    return (
        f"WITH moved AS ({statement})\n"
        f"SELECT moved.*, pg_notify('{CHANNEL}', {projection} || ':' || moved.sequence) FROM moved"
    )


def parse(payload: str) -> tuple[str, int] | None:
    """(projection, checkpoint) from a notice, or None when it is not one of ours."""
    if len(payload) > _PAYLOAD_LENGTH_MAX:
        return None
    name, _, number = payload.rpartition(":")
    if not name or not (number.isascii() and number.isdigit()):
        return None
    return name, int(number)
