"""Signals emitted by strategies, with their reasons and indicators."""

from __future__ import annotations

from typing import Final
from uuid import UUID

from api.queries.filters import INSTRUMENT, SYMBOL, Range, equals
from api.queries.model import Doc, Ownership, ReadModel
from api.queries.schemas import SignalView
from ledger.domain.signal import SignalAction

MODEL: Final = ReadModel(
    name="signals",
    one="signal",
    table="read.signals",
    view=SignalView,
    sort=("emitted_at", "signal_id"),
    key=("signal_id",),
    ownership=Ownership(
        condition="strategy_id IN (SELECT strategy_id FROM read.strategies WHERE owner_id = {})",
        through="strategies",
    ),
    filters=(
        equals("strategy_id", UUID),
        INSTRUMENT,
        SYMBOL,
        equals("action", SignalAction),
        Range("emitted_at"),
    ),
    listing=Doc(
        "List signals",
        "Newest first (by `emitted_at`, then id). A trader sees the signals of their own "
        "strategies. Filters: strategy_id, instrument_id or symbol, action, from/to "
        "(emitted_at).",
    ),
    reading=Doc(
        "A signal",
        "A trader sees the signals of their own strategies only (404 for any other).",
    ),
)
