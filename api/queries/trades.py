"""Trades: one per fill, with the cash it settled and the P&L it realised."""

from __future__ import annotations

from typing import Final
from uuid import UUID

from api.queries.filters import ACCOUNT, INSTRUMENT, SYMBOL, Range, equals
from api.queries.model import OWN_ACCOUNTS, Doc, ReadModel
from api.queries.schemas import TradeView
from ledger.domain.side import Side

MODEL: Final = ReadModel(
    name="trades",
    one="trade",
    table="read.trades",
    view=TradeView,
    # A trade row is upserted by its two events (settlement, booking); it is listed once
    # its booking, which gives its execution time, is applied. A command's two events are
    # both applied by the time its consistency token is.
    where="executed_at IS NOT NULL",
    sort=("executed_at", "order_id", "fill_id"),
    key=("order_id", "fill_id"),
    ownership=OWN_ACCOUNTS,
    filters=(
        ACCOUNT,
        equals("order_id", UUID),
        INSTRUMENT,
        SYMBOL,
        equals("side", Side),
        Range("executed_at"),
    ),
    listing=Doc(
        "List trades",
        "Newest first (by `executed_at`, then order id and fill id). A trader sees the "
        "trades of their own accounts. Filters: account_id, order_id, instrument_id or "
        "symbol, side, from/to (executed_at).",
    ),
    reading=Doc(
        "A trade",
        "By its order and fill id. A trader sees the trades of their own accounts only "
        "(404 for any other).",
    ),
)

# The list's keyset, for its cursors (tests/unit/test_query_paging.py).
KEYSET: Final = MODEL.keyset
