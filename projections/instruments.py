"""Read model `instruments`: what can be traded, its grid, and its status."""

from __future__ import annotations

from typing import Final

import asyncpg

from ledger.domain import Event
from ledger.domain.instrument import (
    InstrumentDelisted,
    InstrumentHalted,
    InstrumentListed,
    InstrumentResumed,
    InstrumentStatus,
)
from projections.base import EventMeta, Handlers, dispatch, execute

NAME: Final = "instruments"
TABLES: Final = ("instruments",)


async def _listed(connection: asyncpg.Connection, event: InstrumentListed, meta: EventMeta) -> None:
    await execute(
        connection,
        "INSERT INTO instruments (instrument_id, symbol, currency, tick_size, lot_size, "
        "price_precision, quantity_precision, status, listed_at, updated_at, version) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9, $10)",
        event.instrument_id,
        event.symbol,
        event.currency,
        event.tick_size,
        event.lot_size,
        event.price_precision,
        event.quantity_precision,
        InstrumentStatus.LISTED.value,
        event.occurred_at,
        meta.version,
    )


async def _status(
    connection: asyncpg.Connection,
    meta: EventMeta,
    event: Event,
    status: InstrumentStatus,
    reason: str | None,
) -> None:
    await execute(
        connection,
        "UPDATE instruments SET status = $2, status_reason = $3, updated_at = $4, version = $5 "
        "WHERE instrument_id = $1",
        meta.stream_id,
        status.value,
        reason,
        event.occurred_at,
        meta.version,
    )


async def _halted(connection: asyncpg.Connection, event: InstrumentHalted, meta: EventMeta) -> None:
    await _status(connection, meta, event, InstrumentStatus.HALTED, event.reason)


async def _resumed(
    connection: asyncpg.Connection, event: InstrumentResumed, meta: EventMeta
) -> None:
    await _status(connection, meta, event, InstrumentStatus.LISTED, None)


async def _delisted(
    connection: asyncpg.Connection, event: InstrumentDelisted, meta: EventMeta
) -> None:
    await _status(connection, meta, event, InstrumentStatus.DELISTED, event.reason)


HANDLERS: Final[Handlers] = {
    InstrumentListed: _listed,
    InstrumentHalted: _halted,
    InstrumentResumed: _resumed,
    InstrumentDelisted: _delisted,
}


async def apply(connection: asyncpg.Connection, event: Event, meta: EventMeta) -> None:
    await dispatch(HANDLERS, connection, event, meta)
