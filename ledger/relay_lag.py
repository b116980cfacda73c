"""How far the relay is behind the log, for /ready and the metrics.

The relay numbers committed events (`sequenced`) and then publishes them to JetStream
(`published`), both cursors in ledger.relay_state. An event is behind while it is not
published: numbered but not yet acked by JetStream, or not yet numbered at all (it
follows the sequencer's (tx, position) cursor). Seconds behind is the age of the oldest
such event (0 when caught up), so a stalled relay's lag grows even when no new event
arrives. Events not yet numbered are counted up to UNSEQUENCED_COUNTED_MAX, which
bounds the query when the relay has been down for long.
"""

from __future__ import annotations

from typing import Final

import asyncpg
import msgspec

UNSEQUENCED_COUNTED_MAX: Final = 10_000

_LAG_SQL: Final = """
WITH state AS (
    SELECT sequenced, sequenced_tx, sequenced_position, published
    FROM ledger.relay_state WHERE singleton),
unsequenced AS (
    SELECT e.recorded_at FROM ledger.events e, state
    WHERE (e.tx, e.notification_id) > (state.sequenced_tx, state.sequenced_position)
    ORDER BY e.tx, e.notification_id
    LIMIT $1)
SELECT state.sequenced, state.published,
       (SELECT count(*) FROM unsequenced) AS unsequenced,
       coalesce(extract(epoch FROM now() - coalesce(
           (SELECT e.recorded_at FROM ledger.sequence s
            JOIN ledger.events e ON e.notification_id = s.position
            WHERE s.sequence = state.published + 1),
           (SELECT min(recorded_at) FROM unsequenced))), 0)::float8 AS seconds_behind
FROM state"""


class RelayLag(msgspec.Struct, frozen=True, kw_only=True):
    sequenced: int  # The last sequence numbered.
    published: int  # The last sequence acked by JetStream.
    unsequenced: int  # Committed events not yet numbered (at most UNSEQUENCED_COUNTED_MAX).
    seconds_behind: float  # Age of the oldest event not yet published; 0 when none.

    @property
    def events_behind(self) -> int:
        return self.sequenced - self.published + self.unsequenced


async def relay_lag(connection: asyncpg.Pool | asyncpg.Connection, timeout_s: float) -> RelayLag:
    """The relay's lag, in one query bounded by `timeout_s`."""
    row = await connection.fetchrow(_LAG_SQL, UNSEQUENCED_COUNTED_MAX, timeout=timeout_s)
    assert row is not None, "ledger.relay_state has its one row from migration 0003"
    return RelayLag(
        sequenced=row["sequenced"],
        published=row["published"],
        unsequenced=row["unsequenced"],
        seconds_behind=max(float(row["seconds_behind"]), 0.0),
    )
