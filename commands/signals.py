"""Signal commands: a strategy emits a BUY / SELL / HOLD signal on an instrument.

The signal, its strategy and its instrument are loaded in one query; only the signal
stream is appended to. The strategy's and the instrument's states are read as of that
query and not re-checked at the append: a signal decided just before a concurrent
deactivation or delisting stands, as if it had come first.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated

import msgspec

from commands.edge import AMOUNT_MAX, RequiredReason, non_negative
from commands.runtime import (
    CommandContext,
    CommandResult,
    Decision,
    Ledger,
    execute,
    on_stream,
    wanted,
)
from ledger.domain import instrument, signal, strategy
from ledger.domain.errors import InvalidParametersError, InvalidSignalError
from ledger.domain.signal import INDICATOR_COUNT_MAX, REASON_COUNT_MAX

IndicatorName = Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
Indicators = Annotated[dict[IndicatorName, Decimal], msgspec.Meta(max_length=INDICATOR_COUNT_MAX)]
Reasons = Annotated[tuple[RequiredReason, ...], msgspec.Meta(max_length=REASON_COUNT_MAX)]


class EmitSignal(signal.EmitSignal, frozen=True, kw_only=True, forbid_unknown_fields=True):
    reasons: Reasons = ()
    indicators: Indicators = msgspec.field(default_factory=dict)

    def __post_init__(self) -> None:
        non_negative(self.strength, "strength")
        if self.strength > 1:
            raise InvalidSignalError(f"strength must be between 0 and 1: {self.strength}")
        for name, value in self.indicators.items():
            # Indicators may be negative (a momentum, a spread); they are only bounded.
            if not value.is_finite() or abs(value) > AMOUNT_MAX:
                raise InvalidParametersError(f"indicator {name} must be a finite decimal")


async def emit_signal(
    ledger: Ledger, command: EmitSignal, context: CommandContext, *, now: datetime | None = None
) -> CommandResult:
    """SignalEmitted, if the strategy is active and the instrument not delisted."""
    moment = ledger.now(now)
    streams = wanted(
        (command.signal_id, signal.STREAM_TYPE),
        (command.strategy_id, strategy.STREAM_TYPE),
        (command.instrument_id, instrument.STREAM_TYPE),
    )

    async def decide() -> Decision:
        loaded = await ledger.repository.load(streams)
        events = signal.decide_emit_signal(
            loaded[command.signal_id].state,
            command,
            now=moment,
            strategy=loaded[command.strategy_id].state,
            instrument=loaded[command.instrument_id].state,
        )
        return Decision(on_stream(loaded[command.signal_id], events), loaded)

    return await execute(ledger, command, context, decide)
