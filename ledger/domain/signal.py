"""Signal aggregate: a strategy's BUY / SELL / HOLD call on an instrument.

A signal is emitted once by an active strategy for an instrument that is not
delisted, and never changes afterwards. Strength is a decimal in 0..1 with at
most four digits; the indicator snapshot is a bounded mapping of names to
decimals. An order may cite the signal it acts on (see ``placement``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from functools import singledispatch
from typing import Final
from uuid import UUID

import msgspec

from ledger.domain.base import Command, Event, assert_utc
from ledger.domain.errors import (
    AlreadyExistsError,
    InstrumentNotFoundError,
    InstrumentNotTradableError,
    InvalidParametersError,
    InvalidSignalError,
    StrategyInactiveError,
    StrategyNotFoundError,
)
from ledger.domain.instrument import InstrumentState, InstrumentStatus
from ledger.domain.money import AMOUNT_MAX, check_amount, exact
from ledger.domain.strategy import StrategyState
from ledger.domain.text import REASON_LENGTH_MAX, check_text

STREAM_TYPE: Final = "signal"
STRENGTH_PRECISION: Final = 4
REASON_COUNT_MAX: Final = 16
INDICATOR_COUNT_MAX: Final = 64
_INDICATOR_NAME: Final = re.compile(r"[a-z][a-z0-9_]{0,63}")


class SignalAction(StrEnum):
    BUY = "BUY"
    SELL = "SELL"
    HOLD = "HOLD"


class SignalEmitted(Event, frozen=True, kw_only=True):
    signal_id: UUID
    strategy_id: UUID
    instrument_id: UUID
    action: SignalAction
    strength: Decimal
    reasons: tuple[str, ...]
    indicators: dict[str, Decimal]


class EmitSignal(Command, frozen=True, kw_only=True):
    signal_id: UUID
    strategy_id: UUID
    instrument_id: UUID
    action: SignalAction
    strength: Decimal
    reasons: tuple[str, ...] = ()
    indicators: dict[str, Decimal] = msgspec.field(default_factory=dict)


class SignalState(msgspec.Struct, frozen=True, kw_only=True):
    signal_id: UUID
    strategy_id: UUID
    instrument_id: UUID
    action: SignalAction
    strength: Decimal
    reasons: tuple[str, ...]
    indicators: dict[str, Decimal]
    emitted_at: datetime


def _check_strength(strength: Decimal) -> Decimal:
    checked = check_amount(strength, STRENGTH_PRECISION, field="strength", allow_zero=True)
    if checked > 1:
        raise InvalidSignalError(f"strength must be between 0 and 1: {strength}")
    return checked


def _check_reasons(reasons: Iterable[str]) -> tuple[str, ...]:
    checked = tuple(
        check_text(reason, field="reason", length_max=REASON_LENGTH_MAX) for reason in reasons
    )
    if len(checked) > REASON_COUNT_MAX:
        raise InvalidSignalError(f"at most {REASON_COUNT_MAX} reasons")
    return checked


def _check_indicators(indicators: Mapping[str, Decimal]) -> dict[str, Decimal]:
    if len(indicators) > INDICATOR_COUNT_MAX:
        raise InvalidParametersError(f"at most {INDICATOR_COUNT_MAX} indicators")
    for name, value in indicators.items():
        if not _INDICATOR_NAME.fullmatch(name):
            raise InvalidParametersError(f"indicator name {name!r} must match [a-z][a-z0-9_]*")
        if not isinstance(value, Decimal) or not value.is_finite() or abs(value) > AMOUNT_MAX:
            raise InvalidParametersError(f"indicator {name} must be a finite decimal")
    return dict(sorted(indicators.items()))


@exact
def decide_emit_signal(
    state: SignalState | None,
    command: EmitSignal,
    *,
    now: datetime,
    strategy: StrategyState | None,
    instrument: InstrumentState | None,
) -> list[Event]:
    assert_utc(now)
    if state is not None:
        raise AlreadyExistsError(f"signal {command.signal_id} already exists")
    if strategy is None:
        raise StrategyNotFoundError(f"strategy {command.strategy_id} does not exist")
    if instrument is None:
        raise InstrumentNotFoundError(f"instrument {command.instrument_id} does not exist")
    assert strategy.strategy_id == command.strategy_id, "handler loaded the wrong strategy"
    assert instrument.instrument_id == command.instrument_id, "handler loaded the wrong instrument"
    if not strategy.active:
        raise StrategyInactiveError(f"strategy {strategy.strategy_id} is not active")
    if instrument.status is InstrumentStatus.DELISTED:
        raise InstrumentNotTradableError(f"instrument {instrument.symbol} is delisted")
    return [
        SignalEmitted(
            occurred_at=now,
            signal_id=command.signal_id,
            strategy_id=command.strategy_id,
            instrument_id=command.instrument_id,
            action=command.action,
            strength=_check_strength(command.strength),
            reasons=_check_reasons(command.reasons),
            indicators=_check_indicators(command.indicators),
        )
    ]


@singledispatch
def _apply(event: Event, state: SignalState | None) -> SignalState:
    raise AssertionError(f"{type(event).__name__} does not belong to a signal stream")


@_apply.register
def _(event: SignalEmitted, state: SignalState | None) -> SignalState:
    assert state is None, "a signal is emitted once"
    return SignalState(
        signal_id=event.signal_id,
        strategy_id=event.strategy_id,
        instrument_id=event.instrument_id,
        action=event.action,
        strength=event.strength,
        reasons=event.reasons,
        indicators=dict(event.indicators),
        emitted_at=event.occurred_at,
    )


def evolve(state: SignalState | None, event: Event) -> SignalState:
    return _apply(event, state)


def fold(events: Iterable[Event]) -> SignalState | None:
    state: SignalState | None = None
    for event in events:
        state = evolve(state, event)
    return state
