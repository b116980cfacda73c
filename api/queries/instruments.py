"""Instruments: what can be traded, its price and quantity grid, and its status."""

from __future__ import annotations

from typing import Final

from api.queries.filters import CURRENCY, SYMBOL, equals
from api.queries.model import Doc, ReadModel
from api.queries.paging import SortOrder
from api.queries.schemas import InstrumentView
from ledger.domain.instrument import InstrumentStatus
from ledger.domain.user import Role

MODEL: Final = ReadModel(
    name="instruments",
    one="instrument",
    table="read.instruments",
    view=InstrumentView,
    sort=("symbol", "instrument_id"),
    key=("instrument_id",),
    roles=tuple(Role),  # every signed-in role; nobody's own rows
    default_order=SortOrder.ASC,
    filters=(equals("status", InstrumentStatus), CURRENCY, SYMBOL),
    listing=Doc(
        "List instruments",
        "By symbol (`order=asc`, the default here). Filters: status, currency, symbol.",
    ),
    reading=Doc("An instrument"),
)
