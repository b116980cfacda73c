"""Orders with their fills."""

from __future__ import annotations

from typing import Final
from uuid import UUID

from api.queries.filters import ACCOUNT, INSTRUMENT, SYMBOL, Range, equals
from api.queries.model import OWN_ACCOUNTS, Children, Doc, ReadModel
from api.queries.schemas import FillView, OrderDetail, OrderView
from ledger.domain.order import OrderStatus
from ledger.domain.side import Side

FILLS_MAX: Final = 500

MODEL: Final = ReadModel(
    name="orders",
    one="order",
    table="read.orders",
    view=OrderView,
    sort=("placed_at", "order_id"),
    key=("order_id",),
    ownership=OWN_ACCOUNTS,
    filters=(
        ACCOUNT,
        INSTRUMENT,
        SYMBOL,
        equals("status", OrderStatus),
        equals("side", Side),
        equals("signal_id", UUID),
        Range("placed_at"),
    ),
    detail=OrderDetail,
    children=Children(
        field="fills",
        view=FillView,
        table="read.order_fills",
        key="order_id",
        order=("executed_at", "fill_id"),
        limit=FILLS_MAX,
    ),
    listing=Doc(
        "List orders",
        "Newest first (by `placed_at`, then id). A trader sees the orders of their own "
        "accounts. Filters: account_id, instrument_id or symbol, status, side, signal_id, "
        "from/to (placed_at).",
    ),
    reading=Doc(
        "An order and its fills",
        f"Fills in execution order, at most {FILLS_MAX} (the trades list, filtered by "
        "order_id, pages through any number). A trader sees the orders of their own "
        "accounts only (404 for any other).",
    ),
)

# The list's keyset, for its cursors (tests/unit/test_query_paging.py).
KEYSET: Final = MODEL.keyset
