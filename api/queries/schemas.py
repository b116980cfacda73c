"""The read models on the wire: Structs of the API's own, one per read model, and pages.

Money, prices, quantities and rates are decimal strings exactly as stored (NUMERIC), never
JSON numbers; times are UTC; days are ISO dates (UTC days). A page is its rows and
`next_cursor`, null on the last page.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Annotated, Any, Final
from uuid import UUID

import msgspec
from msgspec import Meta

DECIMAL_DESCRIPTION: Final = "A decimal number as a string"
Amount = Annotated[str, Meta(description=DECIMAL_DESCRIPTION, examples=["1250.50"])]


def amount(value: Decimal) -> str:
    return format(value, "f")


def optional_amount(value: Decimal | None) -> str | None:
    return None if value is None else format(value, "f")


class View(msgspec.Struct, frozen=True):
    """Base of the read models' wire types.

    Not keyword-only: rows become Views by position, their values in field order
    (api/queries/rows.py), which costs about half what keywords do per row."""


class AccountView(View, frozen=True):
    """A cash account in one currency; `total` is available + reserved."""

    account_id: UUID
    user_id: UUID
    currency: str
    available: Amount
    reserved: Amount
    total: Amount
    allow_short_selling: bool
    fee_rate: Amount
    max_order_notional: Amount | None
    opened_at: datetime
    updated_at: datetime
    version: int


class FillView(View, frozen=True):
    fill_id: str
    quantity: Amount
    price: Amount
    fee: Amount
    cash_amount: Amount
    venue: str
    executed_at: datetime


class OrderView(View, frozen=True):
    order_id: UUID
    account_id: UUID
    instrument_id: UUID
    side: str
    order_type: str
    quantity: Amount
    limit_price: Amount | None
    stop_price: Amount | None
    time_in_force: str
    signal_id: UUID | None
    client_order_id: str | None
    status: str
    hold_amount: Amount
    filled_quantity: Amount
    filled_notional: Amount
    cash_amount: Amount
    fees: Amount
    fill_count: int
    reason_code: str | None
    reason: str | None
    placed_at: datetime
    updated_at: datetime
    version: int


class OrderDetail(OrderView, frozen=True):
    """An order with its fills in execution order (the first FILLS_MAX; the trades list,
    filtered by order_id, pages through any number)."""

    fills: list[FillView]


class TradeView(View, frozen=True):
    order_id: UUID
    fill_id: str
    account_id: UUID | None
    instrument_id: UUID | None
    side: str
    quantity: Amount
    price: Amount
    fee: Amount
    cash_amount: Amount | None
    realised_pnl: Amount | None
    executed_at: datetime
    settled_at: datetime | None


class PositionView(View, frozen=True):
    """Quantity (negative when short), average cost (null when flat), realised P&L."""

    position_id: UUID
    account_id: UUID
    instrument_id: UUID
    quantity: Amount
    average_cost: Amount | None
    cost_basis: Amount
    realised_pnl: Amount
    fees_paid: Amount
    reserved_quantity: Amount
    trade_count: int
    opened_at: datetime
    updated_at: datetime
    version: int


class SignalView(View, frozen=True):
    signal_id: UUID
    strategy_id: UUID
    instrument_id: UUID
    action: str
    strength: Amount
    reasons: list[str]
    indicators: dict[str, str]
    emitted_at: datetime


class StrategyView(View, frozen=True):
    strategy_id: UUID
    name: str
    owner_id: UUID
    parameters: dict[str, Any]
    active: bool
    created_at: datetime
    updated_at: datetime
    version: int


class InstrumentView(View, frozen=True):
    instrument_id: UUID
    symbol: str
    currency: str
    tick_size: Amount
    lot_size: Amount
    price_precision: int
    quantity_precision: int
    status: str
    status_reason: str | None
    listed_at: datetime
    updated_at: datetime
    version: int


class UserView(View, frozen=True):
    """A user as admins see them (never a password hash)."""

    user_id: UUID
    email: str
    display_name: str
    role: str
    disabled: bool
    disabled_reason: str | None
    registered_at: datetime
    updated_at: datetime
    version: int


class DailyPnlView(View, frozen=True):
    """One account's trading on one UTC day: net_pnl is realised_pnl - fees."""

    account_id: UUID
    day: date
    realised_pnl: Amount
    fees: Amount
    net_pnl: Amount
    trade_count: int
    bought_notional: Amount
    sold_notional: Amount


def page_of(view: type[View], rows: str) -> type[View]:
    """The page Struct of a list of `view`: its rows under `rows`, and `next_cursor`.

    Made rather than written out once per read model, since every page has this one
    shape; named as the written ones were (`OrderView` -> `OrderPage`), which is the name
    OpenAPI shows."""
    name = view.__name__.removesuffix("View") + "Page"
    page = msgspec.defstruct(
        name,
        [(rows, list[view]), ("next_cursor", str | None)],  # type: ignore[valid-type]
        bases=(View,),
        module=__name__,
        frozen=True,
    )
    assert issubclass(page, View)
    return page
