"""The "a projection moved" notice: workers send it, the API's read-your-writes waits on it.

After a batch has committed (rows and checkpoint, one transaction), the worker sends
`NOTIFY ledger_projected, '<projection>:<checkpoint>'` on its own connection. It is sent
outside every transaction, so it adds one round trip per batch to the worker and nothing
to appends. It is only a wake-up: a lost notice (a worker that dies between commit and
notify, a listener reconnecting) is found by the listener's slow poll of read.checkpoints.
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


def parse(payload: str) -> tuple[str, int] | None:
    """(projection, checkpoint) from a notice, or None when it is not one of ours."""
    if len(payload) > _PAYLOAD_LENGTH_MAX:
        return None
    name, _, number = payload.rpartition(":")
    if not name or not (number.isascii() and number.isdigit()):
        return None
    return name, int(number)
