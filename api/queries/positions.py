"""Positions: quantity, average cost and realised P&L per account and instrument."""

from __future__ import annotations

from typing import Final

from api.queries.filters import ACCOUNT, INSTRUMENT, SYMBOL, Switch
from api.queries.model import OWN_ACCOUNTS, Doc, ReadModel
from api.queries.schemas import PositionView

MODEL: Final = ReadModel(
    name="positions",
    one="position",
    table="read.positions",
    view=PositionView,
    sort=("opened_at", "position_id"),
    key=("position_id",),
    ownership=OWN_ACCOUNTS,
    filters=(
        ACCOUNT,
        INSTRUMENT,
        SYMBOL,
        Switch("open", when_true="quantity <> 0", when_false="quantity = 0"),
    ),
    listing=Doc(
        "List positions",
        "Newest first (by `opened_at`, then id). A trader sees the positions of their own "
        "accounts. Filters: account_id, instrument_id or symbol, open (true: quantity is "
        "not zero; false: flat).",
    ),
    reading=Doc(
        "A position",
        "A trader sees the positions of their own accounts only (404 for any other).",
    ),
)
