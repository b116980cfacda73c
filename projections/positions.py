"""Read model `positions`: quantity, cost basis, average cost, realised P&L and fees of
each (account, instrument), and the quantity reserved by open sell orders.

Average cost follows rounding rule 5 (half-even to price precision + 4), which needs the
instrument's price precision: this projection keeps its own `position_instruments`
rather than read another projection's table, so it can be rebuilt alone.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any, Final

import asyncpg

from ledger.domain import Event
from ledger.domain.instrument import InstrumentListed
from ledger.domain.money import AVERAGE_COST_EXTRA_DIGITS, ZERO
from ledger.domain.position import (
    PositionOpened,
    SellQuantityReleased,
    SellQuantityReserved,
    TradeBooked,
)
from ledger.domain.side import Side
from projections import batch
from projections.base import (
    STATEMENT_TIMEOUT_S,
    EventMeta,
    Handlers,
    ReadModelError,
    dispatch,
    execute,
    expect_one,
)

NAME: Final = "positions"
TABLES: Final = ("positions", "position_instruments")


async def _listed(connection: asyncpg.Connection, event: InstrumentListed, meta: EventMeta) -> None:
    await execute(
        connection,
        "INSERT INTO position_instruments (instrument_id, price_precision) VALUES ($1, $2)",
        event.instrument_id,
        event.price_precision,
    )


async def _opened(connection: asyncpg.Connection, event: PositionOpened, meta: EventMeta) -> None:
    await execute(
        connection,
        "INSERT INTO positions (position_id, account_id, instrument_id, quantity, cost_basis, "
        "realised_pnl, fees_paid, reserved_quantity, trade_count, opened_at, updated_at, "
        "version) VALUES ($1, $2, $3, 0, 0, 0, 0, 0, 0, $4, $4, $5)",
        meta.stream_id,
        event.account_id,
        event.instrument_id,
        event.occurred_at,
        meta.version,
    )


async def _reserve(
    connection: asyncpg.Connection, meta: EventMeta, event: Event, change: object
) -> None:
    await execute(
        connection,
        "UPDATE positions SET reserved_quantity = reserved_quantity + $2, updated_at = $3, "
        "version = $4 WHERE position_id = $1",
        meta.stream_id,
        change,
        event.occurred_at,
        meta.version,
    )


async def _reserved(
    connection: asyncpg.Connection, event: SellQuantityReserved, meta: EventMeta
) -> None:
    await _reserve(connection, meta, event, event.quantity)


async def _released(
    connection: asyncpg.Connection, event: SellQuantityReleased, meta: EventMeta
) -> None:
    await _reserve(connection, meta, event, -event.quantity)


# A sell fill uses up that much of its order's reservation (the domain asserts it had
# enough), so the reserved total drops by the quantity sold.
_BOOK_SQL: Final = f"""
UPDATE positions p SET
    quantity = p.quantity + $2,
    cost_basis = p.cost_basis + $3,
    realised_pnl = p.realised_pnl + $4,
    fees_paid = p.fees_paid + $5,
    reserved_quantity = p.reserved_quantity - $6,
    trade_count = p.trade_count + 1,
    average_cost = CASE WHEN p.quantity + $2 = 0 THEN NULL ELSE read.divide_half_even(
        abs(p.cost_basis + $3), abs(p.quantity + $2),
        i.price_precision + {AVERAGE_COST_EXTRA_DIGITS}) END,
    updated_at = $7,
    version = $8
FROM position_instruments i
WHERE p.position_id = $1 AND i.instrument_id = p.instrument_id"""


async def _booked(connection: asyncpg.Connection, event: TradeBooked, meta: EventMeta) -> None:
    status = await connection.execute(
        _BOOK_SQL,
        meta.stream_id,
        event.quantity_change,
        event.cost_basis_change,
        event.realised_pnl_change,
        event.fee,
        event.quantity if event.side is Side.SELL else 0,
        event.occurred_at,
        meta.version,
        timeout=10.0,
    )
    expect_one(status, "UPDATE", f"trade on position {meta.stream_id} without its position")


# Page fold (projections/batch.py): the same rows, each written once per page.

COLUMNS: Final = (
    "position_id", "account_id", "instrument_id", "quantity", "cost_basis", "average_cost",
    "realised_pnl", "fees_paid", "reserved_quantity", "trade_count", "opened_at",
    "updated_at", "version",
)  # fmt: skip
(
    _INSTRUMENT_ID, _QUANTITY, _COST_BASIS, _AVERAGE_COST, _REALISED_PNL, _FEES_PAID,
    _RESERVED_QUANTITY, _TRADE_COUNT, _UPDATED_AT, _VERSION,
) = (
    COLUMNS.index(name)
    for name in ("instrument_id", "quantity", "cost_basis", "average_cost", "realised_pnl",
                 "fees_paid", "reserved_quantity", "trade_count", "updated_at", "version")
)  # fmt: skip
_ADDS: Final = {
    "quantity": ZERO, "cost_basis": ZERO, "realised_pnl": ZERO, "fees_paid": ZERO,
    "reserved_quantity": ZERO, "trade_count": 0,
}  # fmt: skip
# Price precisions remembered across pages (instruments are few; past this, forgotten).
PRECISIONS_MAX: Final = 100_000

# Older rows: the page's amounts added, and average cost recomputed from the sums as
# the live _BOOK_SQL does after each trade (it depends on the last quantity and cost
# basis only). Returns how many rows with trades it changed, and how many of those had
# no price precision: the live statement fails on either, and so does a page.
_CHANGE_SQL: Final = """
WITH s AS (
    DELETE FROM {staged} RETURNING position_id, quantity, cost_basis, realised_pnl,
        fees_paid, reserved_quantity, trade_count, updated_at, version
), changed AS (
    UPDATE {schema}.positions p SET
        quantity = p.quantity + s.quantity,
        cost_basis = p.cost_basis + s.cost_basis,
        realised_pnl = p.realised_pnl + s.realised_pnl,
        fees_paid = p.fees_paid + s.fees_paid,
        reserved_quantity = p.reserved_quantity + s.reserved_quantity,
        trade_count = p.trade_count + s.trade_count,
        average_cost = CASE
            WHEN s.trade_count = 0 THEN p.average_cost
            WHEN p.quantity + s.quantity = 0 THEN NULL
            ELSE read.divide_half_even(
                abs(p.cost_basis + s.cost_basis), abs(p.quantity + s.quantity),
                (SELECT i.price_precision FROM {schema}.position_instruments i
                 WHERE i.instrument_id = p.instrument_id) + {extra}) END,
        updated_at = s.updated_at,
        version = s.version
    FROM s WHERE p.position_id = s.position_id
    RETURNING s.trade_count > 0 AS traded, NOT EXISTS (
        SELECT 1 FROM {schema}.position_instruments i
        WHERE i.instrument_id = p.instrument_id) AS unlisted
)
SELECT count(*) FILTER (WHERE traded), count(*) FILTER (WHERE traded AND unlisted)
FROM changed"""
_CHANGE_COLUMNS: Final = tuple(
    COLUMNS.index(name)
    for name in ("position_id", "quantity", "cost_basis", "realised_pnl", "fees_paid",
                 "reserved_quantity", "trade_count", "updated_at", "version")
)  # fmt: skip


def divide_half_even(numerator: Decimal, denominator: Decimal, digits: int) -> Decimal:
    """read.divide_half_even in Python (under batch.exact()): the same digits, same scale."""
    scaled = numerator.scaleb(digits)
    quotient = scaled // denominator
    remainder = scaled - quotient * denominator
    if 2 * remainder > denominator or (2 * remainder == denominator and quotient % 2 == 1):
        quotient += 1
    return Decimal(int(quotient)).scaleb(-digits)


class Page(batch.Page):
    def __init__(self) -> None:
        self.instruments = batch.Rows(
            "position_instruments", ("instrument_id", "price_precision"), "instrument_id"
        )
        self.positions = batch.Rows("positions", COLUMNS, "position_id", _ADDS)
        self.traded: set[str] = set()  # created by this page, and traded since
        self.precisions: dict[str, int] = {}

    def taken(self) -> Any:
        traded, self.traded = self.traded, set()
        return self.instruments.take(), self.positions.take(), traded

    async def write(
        self, connection: asyncpg.Connection, schema: str, staging: batch.Staging, taken: Any
    ) -> None:
        instruments, (created, changed), traded = taken
        await self.instruments.write(connection, schema, staging, instruments)
        if changed:
            await self._change(connection, schema, staging, changed)
        if traded:
            await self._average_costs(connection, schema, created, traded)
        await self.positions.write(connection, schema, staging, (created, {}))

    async def _change(
        self,
        connection: asyncpg.Connection,
        schema: str,
        staging: batch.Staging,
        changed: dict[str, list[Any]],
    ) -> None:
        staged = await staging.like(connection, schema, "positions")
        rows = [
            [key, *(row[index] for index in _CHANGE_COLUMNS[1:])] for key, row in changed.items()
        ]
        names = [COLUMNS[index] for index in _CHANGE_COLUMNS]
        await batch.copy_rows(connection, None, staged, names, rows)
        sql = _CHANGE_SQL.format(schema=schema, staged=staged, extra=AVERAGE_COST_EXTRA_DIGITS)
        traded, unlisted = await connection.fetchrow(sql, timeout=STATEMENT_TIMEOUT_S)
        wanted = sum(1 for row in changed.values() if row[_TRADE_COUNT] > 0)
        if traded != wanted or unlisted:
            raise ReadModelError(
                f"positions: {wanted - traded} trades on positions missing, "
                f"{unlisted} on instruments missing"
            )

    async def _average_costs(
        self,
        connection: asyncpg.Connection,
        schema: str,
        created: dict[str, list[Any]],
        traded: set[str],
    ) -> None:
        unknown = {created[key][_INSTRUMENT_ID] for key in traded} - self.precisions.keys()
        if unknown:
            rows = await connection.fetch(
                f"SELECT instrument_id::text, price_precision FROM {schema}.position_instruments "
                "WHERE instrument_id = ANY($1::uuid[])",
                list(unknown),
                timeout=STATEMENT_TIMEOUT_S,
            )
            self.remember({row[0]: row[1] for row in rows})
        with batch.exact():
            for key in traded:
                row = created[key]
                precision = self.precisions.get(row[_INSTRUMENT_ID])
                if precision is None:
                    raise ReadModelError(f"trade on position {key} of no known instrument")
                quantity = row[_QUANTITY]
                row[_AVERAGE_COST] = (
                    None
                    if quantity == 0
                    else divide_half_even(
                        abs(row[_COST_BASIS]), abs(quantity), precision + AVERAGE_COST_EXTRA_DIGITS
                    )
                )

    def remember(self, precisions: dict[str, int]) -> None:
        if len(self.precisions) + len(precisions) > PRECISIONS_MAX:
            self.precisions.clear()
        self.precisions.update(precisions)


def _fold_listed(page: Page, event: InstrumentListed, meta: batch.Meta) -> None:
    page.instruments.insert(event.instrument_id, [event.instrument_id, event.price_precision])
    page.remember({event.instrument_id: event.price_precision})


def _fold_opened(page: Page, event: PositionOpened, meta: batch.Meta) -> None:
    page.positions.insert(
        meta.stream_id,
        [meta.stream_id, event.account_id, event.instrument_id, ZERO, ZERO, None, ZERO, ZERO,
         ZERO, 0, event.occurred_at, event.occurred_at, meta.version],
    )  # fmt: skip


def _changed(page: Page, event: Event, meta: batch.Meta) -> list[Any]:
    row = page.positions.row(meta.stream_id)
    row[_UPDATED_AT] = event.occurred_at
    row[_VERSION] = meta.version
    return row


def _fold_reserved(page: Page, event: SellQuantityReserved, meta: batch.Meta) -> None:
    _changed(page, event, meta)[_RESERVED_QUANTITY] += event.quantity


def _fold_released(page: Page, event: SellQuantityReleased, meta: batch.Meta) -> None:
    _changed(page, event, meta)[_RESERVED_QUANTITY] -= event.quantity


def _fold_booked(page: Page, event: TradeBooked, meta: batch.Meta) -> None:
    row = _changed(page, event, meta)
    row[_QUANTITY] += event.quantity_change
    row[_COST_BASIS] += event.cost_basis_change
    row[_REALISED_PNL] += event.realised_pnl_change
    row[_FEES_PAID] += event.fee
    if event.side is Side.SELL:
        row[_RESERVED_QUANTITY] -= event.quantity
    row[_TRADE_COUNT] += 1
    if meta.stream_id in page.positions.created:
        page.traded.add(meta.stream_id)


Page.COMPUTED = {
    TradeBooked: frozenset(
        {"quantity_change", "cost_basis_change", "realised_pnl_change", "fee", "quantity"}
    ),
    SellQuantityReserved: frozenset({"quantity"}),
    SellQuantityReleased: frozenset({"quantity"}),
}
Page.FOLDS = {
    InstrumentListed: _fold_listed,
    PositionOpened: _fold_opened,
    SellQuantityReserved: _fold_reserved,
    SellQuantityReleased: _fold_released,
    TradeBooked: _fold_booked,
}

HANDLERS: Final[Handlers] = {
    InstrumentListed: _listed,
    PositionOpened: _opened,
    SellQuantityReserved: _reserved,
    SellQuantityReleased: _released,
    TradeBooked: _booked,
}


async def apply(connection: asyncpg.Connection, event: Event, meta: EventMeta) -> None:
    await dispatch(HANDLERS, connection, event, meta)
