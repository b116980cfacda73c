"""Stream types and their evolution, for code that rebuilds any stream by its type.

``fold_stream("order", events)`` is what ``/streams/{id}/state?as_of=`` and the
analysts' notebooks need; the command handlers use each module's ``fold``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType
from typing import Final

import msgspec

from ledger.domain import account, instrument, order, position, signal, strategy, user
from ledger.domain.base import Event

EVOLVERS: Final[Mapping[str, Callable[..., msgspec.Struct]]] = MappingProxyType(
    {
        user.STREAM_TYPE: user.evolve,
        account.STREAM_TYPE: account.evolve,
        instrument.STREAM_TYPE: instrument.evolve,
        strategy.STREAM_TYPE: strategy.evolve,
        signal.STREAM_TYPE: signal.evolve,
        order.STREAM_TYPE: order.evolve,
        position.STREAM_TYPE: position.evolve,
    }
)
STREAM_TYPES: Final = tuple(EVOLVERS)


def fold_stream(stream_type: str, events: Iterable[Event]) -> msgspec.Struct | None:
    """The state of a stream of ``stream_type`` after ``events`` (None if there are none)."""
    evolve = EVOLVERS[stream_type]
    state: msgspec.Struct | None = None
    for event in events:
        state = evolve(state, event)
    return state
