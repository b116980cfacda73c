"""Read model `signals`: every signal emitted, with reasons and indicators (jsonb; the
indicator values are decimal strings, so they stay exact)."""

from __future__ import annotations

from typing import Any, Final

import asyncpg

from ledger.domain import Event
from ledger.domain.signal import SignalEmitted
from projections import batch
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


# Page fold (projections/batch.py): the same rows, written with COPY.

COLUMNS: Final = (
    "signal_id", "strategy_id", "instrument_id", "action", "strength", "reasons",
    "indicators", "emitted_at", "sequence",
)  # fmt: skip


class Page(batch.Page):
    def __init__(self) -> None:
        self.signals = batch.Rows(
            "signals", COLUMNS, "signal_id", free_text=("reasons", "indicators")
        )

    def taken(self) -> Any:
        return self.signals.take()

    async def write(
        self, connection: asyncpg.Connection, schema: str, staging: batch.Staging, taken: Any
    ) -> None:
        await self.signals.write(connection, schema, staging, taken)


def _fold_emitted(page: Page, event: SignalEmitted, meta: batch.Meta) -> None:
    page.signals.insert(
        event.signal_id,
        [event.signal_id, event.strategy_id, event.instrument_id, event.action.value,
         event.strength, to_json(list(event.reasons)), to_json(event.indicators),
         event.occurred_at, meta.sequence],
    )  # fmt: skip


Page.FOLDS = {SignalEmitted: _fold_emitted}

HANDLERS: Final[Handlers] = {SignalEmitted: _emitted}


async def apply(connection: asyncpg.Connection, event: Event, meta: EventMeta) -> None:
    await dispatch(HANDLERS, connection, event, meta)
