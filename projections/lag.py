"""How far each projection is behind the log, for /ready and the metrics.

Head: the last sequence given (ledger.sequence). Events behind: head - checkpoint.
Seconds behind: how long the oldest event not yet applied has been in the log (0 when
caught up), so a stalled projection's lag grows even when no new events arrive.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

import asyncpg
import msgspec

from projections.base import STATEMENT_TIMEOUT_S
from projections.registry import NAMES

_LAG_SQL: Final = """
WITH head AS (SELECT coalesce(max(sequence), 0) AS sequence FROM ledger.sequence)
SELECT n.projection, coalesce(c.sequence, 0) AS checkpoint, head.sequence AS head,
       coalesce(c.failing, false) AS failing, c.last_error, c.parked_sequence,
       coalesce(extract(epoch FROM now() - (
           SELECT e.recorded_at FROM ledger.sequence s
           JOIN ledger.events e ON e.notification_id = s.position
           WHERE s.sequence = coalesce(c.sequence, 0) + 1)), 0)::float8 AS seconds_behind
FROM unnest($1::text[]) WITH ORDINALITY AS n (projection, ordinal)
CROSS JOIN head
LEFT JOIN read.checkpoints c ON c.projection = n.projection
ORDER BY n.ordinal"""


class ProjectionLag(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    checkpoint: int
    head: int
    events_behind: int
    seconds_behind: float
    failing: bool
    last_error: str | None
    parked_sequence: int | None


async def lag(pool: asyncpg.Pool, names: Iterable[str] = NAMES) -> list[ProjectionLag]:
    """The lag of each projection named (all by default), in one query."""
    rows = await pool.fetch(_LAG_SQL, list(names), timeout=STATEMENT_TIMEOUT_S)
    return [
        ProjectionLag(
            name=row["projection"],
            checkpoint=row["checkpoint"],
            head=row["head"],
            events_behind=max(row["head"] - row["checkpoint"], 0),
            seconds_behind=max(float(row["seconds_behind"]), 0.0),
            failing=row["failing"],
            last_error=row["last_error"],
            parked_sequence=row["parked_sequence"],
        )
        for row in rows
    ]


def ready(lags: Iterable[ProjectionLag], *, seconds_behind_max: float | None = None) -> bool:
    """For /ready: no projection parked on a poison event, and none too far behind."""
    return all(
        not item.failing
        and (seconds_behind_max is None or item.seconds_behind <= seconds_behind_max)
        for item in lags
    )


def metrics_text(lags: Iterable[ProjectionLag]) -> str:
    """The lags in the Prometheus text format, for /metrics."""
    gauges = {
        "ledger_projection_checkpoint": "Last sequence applied by the projection.",
        "ledger_projection_head": "Last sequence in the log.",
        "ledger_projection_events_behind": "Events in the log not yet applied.",
        "ledger_projection_seconds_behind": "Age of the oldest event not yet applied.",
        "ledger_projection_failing": "1 when a poison event parked the projection.",
    }
    items = list(lags)
    lines: list[str] = []
    for metric, help_text in gauges.items():
        lines += [f"# HELP {metric} {help_text}", f"# TYPE {metric} gauge"]
        for item in items:
            value = {
                "ledger_projection_checkpoint": item.checkpoint,
                "ledger_projection_head": item.head,
                "ledger_projection_events_behind": item.events_behind,
                "ledger_projection_seconds_behind": item.seconds_behind,
                "ledger_projection_failing": int(item.failing),
            }[metric]
            lines.append(f'{metric}{{projection="{item.name}"}} {value}')
    return "\n".join(lines) + "\n"
