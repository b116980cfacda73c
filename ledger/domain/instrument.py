"""Instrument aggregate: what can be traded, in which currency, on which price and size grid.

Lifecycle: listed <-> halted, and either -> delisted (final). Orders are only
accepted on a listed instrument; fills that the venue reports are booked whatever
the status, because the trade already happened.

Precision: ``tick_size`` has at most ``price_precision`` digits and ``lot_size``
at most ``quantity_precision``; a price must be a multiple of the tick and a
quantity a multiple of the lot. Symbol uniqueness spans streams, so the handler
passes ``symbol_taken`` in.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
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
    InvalidInstrumentError,
    InvalidStateTransitionError,
    InvalidTextError,
    LotSizeViolationError,
    SymbolTakenError,
    TickSizeViolationError,
)
from ledger.domain.money import (
    PRECISION_MAX,
    check_amount,
    currency_precision,
    exact,
    is_multiple,
)
from ledger.domain.text import REASON_LENGTH_MAX, check_text

STREAM_TYPE: Final = "instrument"
_SYMBOL: Final = re.compile(r"[A-Z0-9][A-Z0-9./\-]{0,31}")


class InstrumentStatus(StrEnum):
    LISTED = "listed"
    HALTED = "halted"
    DELISTED = "delisted"


# Events ---------------------------------------------------------------------


class InstrumentListed(Event, frozen=True, kw_only=True):
    instrument_id: UUID
    symbol: str
    currency: str
    tick_size: Decimal
    lot_size: Decimal
    price_precision: int
    quantity_precision: int


class InstrumentHalted(Event, frozen=True, kw_only=True):
    reason: str


class InstrumentResumed(Event, frozen=True, kw_only=True):
    pass


class InstrumentDelisted(Event, frozen=True, kw_only=True):
    reason: str


# Commands -------------------------------------------------------------------


class ListInstrument(Command, frozen=True, kw_only=True):
    instrument_id: UUID
    symbol: str
    currency: str
    tick_size: Decimal
    lot_size: Decimal
    price_precision: int
    quantity_precision: int


class HaltInstrument(Command, frozen=True, kw_only=True):
    instrument_id: UUID
    reason: str = ""


class ResumeInstrument(Command, frozen=True, kw_only=True):
    instrument_id: UUID


class DelistInstrument(Command, frozen=True, kw_only=True):
    instrument_id: UUID
    reason: str = ""


# State ----------------------------------------------------------------------


class InstrumentState(msgspec.Struct, frozen=True, kw_only=True):
    instrument_id: UUID
    symbol: str
    currency: str
    tick_size: Decimal
    lot_size: Decimal
    price_precision: int
    quantity_precision: int
    status: InstrumentStatus
    listed_at: datetime
    updated_at: datetime

    @property
    def tradable(self) -> bool:
        return self.status is InstrumentStatus.LISTED

    @property
    def notional_precision(self) -> int:
        """Digits after the point of any quantity x price on this instrument's grid."""
        return self.price_precision + self.quantity_precision


def check_price(instrument: InstrumentState, price: Decimal, *, field: str = "price") -> Decimal:
    """``price`` at the instrument's precision, on its tick grid, or a validation error."""
    checked = check_amount(price, instrument.price_precision, field=field)
    if not is_multiple(checked, instrument.tick_size):
        raise TickSizeViolationError(
            f"{field} {price} is not a multiple of the tick size {instrument.tick_size}"
        )
    return checked


def check_quantity(instrument: InstrumentState, quantity: Decimal) -> Decimal:
    """``quantity`` at the instrument's precision, a whole number of lots, or a validation error."""
    checked = check_amount(quantity, instrument.quantity_precision, field="quantity")
    if not is_multiple(checked, instrument.lot_size):
        raise LotSizeViolationError(
            f"quantity {quantity} is not a multiple of the lot size {instrument.lot_size}"
        )
    return checked


def _check_precision_value(value: int, field: str) -> int:
    if not 0 <= value <= PRECISION_MAX:
        raise InvalidInstrumentError(f"{field} must be between 0 and {PRECISION_MAX}")
    return value


def _existing(state: InstrumentState | None, instrument_id: UUID) -> InstrumentState:
    if state is None:
        raise InstrumentNotFoundError(f"instrument {instrument_id} does not exist")
    assert state.instrument_id == instrument_id, "handler loaded the wrong stream"
    return state


def _transition(
    state: InstrumentState, allowed_from: frozenset[InstrumentStatus], action: str
) -> None:
    if state.status not in allowed_from:
        raise InvalidStateTransitionError(f"cannot {action} an instrument that is {state.status}")


# Decisions ------------------------------------------------------------------


@exact
def decide_list_instrument(
    state: InstrumentState | None, command: ListInstrument, *, now: datetime, symbol_taken: bool
) -> list[Event]:
    assert_utc(now)
    if state is not None:
        raise AlreadyExistsError(f"instrument {command.instrument_id} already exists")
    symbol = command.symbol.strip().upper()
    if not _SYMBOL.fullmatch(symbol):
        raise InvalidTextError(f"not a symbol: {command.symbol!r}")
    if symbol_taken:
        raise SymbolTakenError(f"symbol {symbol} is already listed")
    currency_precision(command.currency)
    price_precision = _check_precision_value(command.price_precision, "price_precision")
    quantity_precision = _check_precision_value(command.quantity_precision, "quantity_precision")
    return [
        InstrumentListed(
            occurred_at=now,
            instrument_id=command.instrument_id,
            symbol=symbol,
            currency=command.currency,
            tick_size=check_amount(command.tick_size, price_precision, field="tick_size"),
            lot_size=check_amount(command.lot_size, quantity_precision, field="lot_size"),
            price_precision=price_precision,
            quantity_precision=quantity_precision,
        )
    ]


def decide_halt_instrument(
    state: InstrumentState | None, command: HaltInstrument, *, now: datetime
) -> list[Event]:
    assert_utc(now)
    instrument = _existing(state, command.instrument_id)
    _transition(instrument, frozenset({InstrumentStatus.LISTED}), "halt")
    reason = check_text(
        command.reason, field="reason", length_max=REASON_LENGTH_MAX, allow_empty=True
    )
    return [InstrumentHalted(occurred_at=now, reason=reason)]


def decide_resume_instrument(
    state: InstrumentState | None, command: ResumeInstrument, *, now: datetime
) -> list[Event]:
    assert_utc(now)
    instrument = _existing(state, command.instrument_id)
    _transition(instrument, frozenset({InstrumentStatus.HALTED}), "resume")
    return [InstrumentResumed(occurred_at=now)]


def decide_delist_instrument(
    state: InstrumentState | None, command: DelistInstrument, *, now: datetime
) -> list[Event]:
    assert_utc(now)
    instrument = _existing(state, command.instrument_id)
    _transition(instrument, frozenset({InstrumentStatus.LISTED, InstrumentStatus.HALTED}), "delist")
    reason = check_text(
        command.reason, field="reason", length_max=REASON_LENGTH_MAX, allow_empty=True
    )
    return [InstrumentDelisted(occurred_at=now, reason=reason)]


# Evolution ------------------------------------------------------------------


@singledispatch
def _apply(event: Event, state: InstrumentState | None) -> InstrumentState:
    raise AssertionError(f"{type(event).__name__} does not belong to an instrument stream")


@_apply.register
def _(event: InstrumentListed, state: InstrumentState | None) -> InstrumentState:
    assert state is None, "an instrument is listed once"
    return InstrumentState(
        instrument_id=event.instrument_id,
        symbol=event.symbol,
        currency=event.currency,
        tick_size=event.tick_size,
        lot_size=event.lot_size,
        price_precision=event.price_precision,
        quantity_precision=event.quantity_precision,
        status=InstrumentStatus.LISTED,
        listed_at=event.occurred_at,
        updated_at=event.occurred_at,
    )


def _with_status(
    state: InstrumentState | None, status: InstrumentStatus, event: Event
) -> InstrumentState:
    assert state is not None
    return msgspec.structs.replace(state, status=status, updated_at=event.occurred_at)


@_apply.register
def _(event: InstrumentHalted, state: InstrumentState | None) -> InstrumentState:
    return _with_status(state, InstrumentStatus.HALTED, event)


@_apply.register
def _(event: InstrumentResumed, state: InstrumentState | None) -> InstrumentState:
    return _with_status(state, InstrumentStatus.LISTED, event)


@_apply.register
def _(event: InstrumentDelisted, state: InstrumentState | None) -> InstrumentState:
    return _with_status(state, InstrumentStatus.DELISTED, event)


def evolve(state: InstrumentState | None, event: Event) -> InstrumentState:
    return _apply(event, state)


def fold(events: Iterable[Event]) -> InstrumentState | None:
    state: InstrumentState | None = None
    for event in events:
        state = evolve(state, event)
    return state
