"""Strategies: name, owner, parameters and whether they are active."""

from __future__ import annotations

from typing import Final
from uuid import UUID

from api.queries.filters import equals
from api.queries.model import Doc, Ownership, ReadModel
from api.queries.schemas import StrategyView

MODEL: Final = ReadModel(
    name="strategies",
    one="strategy",
    table="read.strategies",
    view=StrategyView,
    sort=("created_at", "strategy_id"),
    key=("strategy_id",),
    ownership=Ownership(condition="owner_id = {}"),
    filters=(
        equals("owner_id", UUID),
        equals("active", bool),
    ),
    listing=Doc(
        "List strategies",
        "Newest first (by `created_at`, then id). A trader sees the strategies they own. "
        "Filters: owner_id, active.",
    ),
    reading=Doc("A strategy", "A trader sees the strategies they own only (404 for any other)."),
)
