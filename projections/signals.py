"""Read model `signals`: every signal emitted, with reasons and indicators (jsonb; the
indicator values are decimal strings, so they stay exact)."""

from __future__ import annotations

from typing import Final

import asyncpg

from ledger.domain import Event
from ledger.domain.signal import SignalEmitted
from projections.base import EventMeta, Handlers, dispatch, execute, to_json

NAME: Final = "signals"
TABLES: Final = ("signals",)


async def _emitted(connection: asyncpg.Connection, event: SignalEmitted, meta: EventMeta) -> None:
    await execute(
        connection,
        "INSERT INTO signals (signal_id, strategy_id, instrument_id, action, strength, reasons, "
        "indicators, emitted_at, sequence) "
        "VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7::jsonb, $8, $9)",
        event.signal_id,
        event.strategy_id,
        event.instrument_id,
        event.action.value,
        event.strength,
        to_json(list(event.reasons)),
        to_json(event.indicators),
        event.occurred_at,
        meta.sequence,
    )


HANDLERS: Final[Handlers] = {SignalEmitted: _emitted}


async def apply(connection: asyncpg.Connection, event: Event, meta: EventMeta) -> None:
    await dispatch(HANDLERS, connection, event, meta)
