"""Read model `instruments`: what can be traded, its grid, and its status."""

from __future__ import annotations

from typing import Any, Final

import asyncpg

from ledger.domain import Event
from ledger.domain.instrument import (
    InstrumentDelisted,
    InstrumentHalted,
    InstrumentListed,
    InstrumentResumed,
    InstrumentStatus,
)
from projections import batch
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


# Page fold (projections/batch.py): the same rows, each written once per page.

COLUMNS: Final = (
    "instrument_id", "symbol", "currency", "tick_size", "lot_size", "price_precision",
    "quantity_precision", "status", "status_reason", "listed_at", "updated_at", "version",
)  # fmt: skip
_STATUS, _STATUS_REASON, _UPDATED_AT, _VERSION = (
    COLUMNS.index(name) for name in ("status", "status_reason", "updated_at", "version")
)


class Page(batch.Page):
    def __init__(self) -> None:
        self.instruments = batch.Rows(
            "instruments", COLUMNS, "instrument_id", free_text=("symbol", "status_reason")
        )

    def taken(self) -> Any:
        return self.instruments.take()

    async def write(
        self, connection: asyncpg.Connection, schema: str, staging: batch.Staging, taken: Any
    ) -> None:
        await self.instruments.write(connection, schema, staging, taken)


def _fold_listed(page: Page, event: InstrumentListed, meta: batch.Meta) -> None:
    page.instruments.insert(
        event.instrument_id,
        [event.instrument_id, event.symbol, event.currency, event.tick_size, event.lot_size,
         event.price_precision, event.quantity_precision, InstrumentStatus.LISTED.value, None,
         event.occurred_at, event.occurred_at, meta.version],
    )  # fmt: skip


def _fold_status(
    page: Page, meta: batch.Meta, event: Event, status: InstrumentStatus, reason: str | None
) -> None:
    row = page.instruments.row(meta.stream_id)
    row[_STATUS] = status.value
    row[_STATUS_REASON] = reason
    row[_UPDATED_AT] = event.occurred_at
    row[_VERSION] = meta.version


def _fold_halted(page: Page, event: InstrumentHalted, meta: batch.Meta) -> None:
    _fold_status(page, meta, event, InstrumentStatus.HALTED, event.reason)


def _fold_resumed(page: Page, event: InstrumentResumed, meta: batch.Meta) -> None:
    _fold_status(page, meta, event, InstrumentStatus.LISTED, None)


def _fold_delisted(page: Page, event: InstrumentDelisted, meta: batch.Meta) -> None:
    _fold_status(page, meta, event, InstrumentStatus.DELISTED, event.reason)


Page.FOLDS = {
    InstrumentListed: _fold_listed,
    InstrumentHalted: _fold_halted,
    InstrumentResumed: _fold_resumed,
    InstrumentDelisted: _fold_delisted,
}

HANDLERS: Final[Handlers] = {
    InstrumentListed: _listed,
    InstrumentHalted: _halted,
    InstrumentResumed: _resumed,
    InstrumentDelisted: _delisted,
}


async def apply(connection: asyncpg.Connection, event: Event, meta: EventMeta) -> None:
    await dispatch(HANDLERS, connection, event, meta)
