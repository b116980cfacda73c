"""Instruments: what can be traded, its price and quantity grid, and its status."""

from __future__ import annotations

from typing import Final
from uuid import UUID

from api.queries.filters import CURRENCY, SYMBOL, equals
from api.queries.model import Doc, ReadModel
from api.queries.paging import Keyset, SortOrder
from api.queries.schemas import InstrumentView
from ledger.domain.instrument import InstrumentStatus
from ledger.domain.user import Role

KEYSET: Final = Keyset(
    name="instruments", columns=("symbol", "instrument_id"), key_type=tuple[str, UUID]
)

MODEL: Final = ReadModel(
    name="instruments",
    one="instrument",
    table="read.instruments",
    view=InstrumentView,
    keyset=KEYSET,
    key=(("instrument_id", UUID),),
    roles=tuple(Role),  # every signed-in role; nobody's own rows
    default_order=SortOrder.ASC,
    filters=(equals("status", InstrumentStatus), CURRENCY, SYMBOL),
    listing=Doc(
        "List instruments",
        "By symbol (`order=asc`, the default here). Filters: status, currency, symbol.",
    ),
    reading=Doc("An instrument"),
)
