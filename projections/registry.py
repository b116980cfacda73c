"""Every projection by name: its module's handlers and the tables it owns in `read`."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType, ModuleType
from typing import Final

from projections import (
    accounts,
    daily_pnl,
    instruments,
    orders,
    positions,
    signals,
    strategies,
    trades,
    users,
)
from projections.base import Projection

_MODULES: Final[tuple[ModuleType, ...]] = (
    users,
    accounts,
    instruments,
    strategies,
    signals,
    orders,
    trades,
    positions,
    daily_pnl,
)

PROJECTIONS: Final[Mapping[str, Projection]] = MappingProxyType(
    {
        module.NAME: Projection(
            name=module.NAME, tables=module.TABLES, handlers=module.HANDLERS, page=module.Page
        )
        for module in _MODULES
    }
)
NAMES: Final = tuple(PROJECTIONS)


class UnknownProjectionError(LookupError):
    """Raised when a name given on the command line is no projection's."""


def select(names: Iterable[str]) -> list[Projection]:
    """The projections named ("all" names every one), in registry order, each once."""
    wanted = set(names)
    if "all" in wanted:
        return list(PROJECTIONS.values())
    unknown = wanted - PROJECTIONS.keys()
    if unknown:
        raise UnknownProjectionError(
            f"unknown projection(s) {sorted(unknown)}; known: {', '.join(NAMES)} or all"
        )
    return [projection for name, projection in PROJECTIONS.items() if name in wanted]
