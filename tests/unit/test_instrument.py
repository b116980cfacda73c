"""Instrument: listing, its grid, and its lifecycle."""

from __future__ import annotations

from decimal import Decimal

import pytest

from ledger.domain.errors import (
    AlreadyExistsError,
    InstrumentNotFoundError,
    InvalidInstrumentError,
    InvalidStateTransitionError,
    InvalidTextError,
    LotSizeViolationError,
    PrecisionExceededError,
    SymbolTakenError,
    TickSizeViolationError,
    UnknownCurrencyError,
)
from ledger.domain.instrument import (
    DelistInstrument,
    HaltInstrument,
    InstrumentDelisted,
    InstrumentHalted,
    InstrumentListed,
    InstrumentResumed,
    InstrumentStatus,
    ListInstrument,
    ResumeInstrument,
    check_price,
    check_quantity,
    decide_delist_instrument,
    decide_halt_instrument,
    decide_list_instrument,
    decide_resume_instrument,
    fold,
)
from tests.unit.support import INSTRUMENT_ID, LATER, NOW

LISTED = InstrumentListed(
    occurred_at=NOW,
    instrument_id=INSTRUMENT_ID,
    symbol="BRK.B",
    currency="USD",
    tick_size=Decimal("0.05"),
    lot_size=Decimal("10"),
    price_precision=2,
    quantity_precision=0,
)
HALTED = InstrumentHalted(occurred_at=LATER, reason="news pending")


def list_command(**changes: object) -> ListInstrument:
    fields: dict[str, object] = {
        "instrument_id": INSTRUMENT_ID,
        "symbol": " brk.b ",
        "currency": "USD",
        "tick_size": Decimal("0.05"),
        "lot_size": Decimal("10"),
        "price_precision": 2,
        "quantity_precision": 0,
    } | changes
    return ListInstrument(**fields)  # type: ignore[arg-type]


def test_list_upper_cases_the_symbol() -> None:
    assert decide_list_instrument(None, list_command(), now=NOW, symbol_taken=False) == [LISTED]


def test_list_twice_or_under_a_taken_symbol_is_refused() -> None:
    with pytest.raises(AlreadyExistsError):
        decide_list_instrument(fold([LISTED]), list_command(), now=NOW, symbol_taken=False)
    with pytest.raises(SymbolTakenError):
        decide_list_instrument(None, list_command(), now=NOW, symbol_taken=True)


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"symbol": "no spaces"}, InvalidTextError),
        ({"currency": "XXX"}, UnknownCurrencyError),
        ({"tick_size": Decimal("0.005")}, PrecisionExceededError),
        ({"lot_size": Decimal("0.5")}, PrecisionExceededError),
        ({"price_precision": 11}, InvalidInstrumentError),
        ({"quantity_precision": -1}, InvalidInstrumentError),
    ],
)
def test_list_refuses_an_inconsistent_grid(
    changes: dict[str, object], error: type[Exception]
) -> None:
    with pytest.raises(error):
        decide_list_instrument(None, list_command(**changes), now=NOW, symbol_taken=False)


def test_prices_and_quantities_must_lie_on_the_grid() -> None:
    instrument = fold([LISTED])
    assert instrument is not None
    assert check_price(instrument, Decimal("10.05")) == Decimal("10.05")
    assert check_quantity(instrument, Decimal("30")) == Decimal("30")
    with pytest.raises(TickSizeViolationError):
        check_price(instrument, Decimal("10.01"))
    with pytest.raises(PrecisionExceededError):
        check_price(instrument, Decimal("10.051"))
    with pytest.raises(LotSizeViolationError):
        check_quantity(instrument, Decimal("15"))
    with pytest.raises(PrecisionExceededError):
        check_quantity(instrument, Decimal("10.5"))


def test_halt_resume_delist() -> None:
    listed = fold([LISTED])
    assert decide_halt_instrument(
        listed, HaltInstrument(instrument_id=INSTRUMENT_ID, reason="news pending"), now=LATER
    ) == [HALTED]
    halted = fold([LISTED, HALTED])
    assert halted is not None
    assert not halted.tradable
    resumed = decide_resume_instrument(
        halted, ResumeInstrument(instrument_id=INSTRUMENT_ID), now=LATER
    )
    assert resumed == [InstrumentResumed(occurred_at=LATER)]
    delisted = decide_delist_instrument(
        halted, DelistInstrument(instrument_id=INSTRUMENT_ID), now=LATER
    )
    assert delisted == [InstrumentDelisted(occurred_at=LATER, reason="")]
    final = fold([LISTED, HALTED, *delisted])
    assert final is not None
    assert final.status is InstrumentStatus.DELISTED


def test_transitions_the_state_forbids_are_refused() -> None:
    listed = fold([LISTED])
    halted = fold([LISTED, HALTED])
    delisted = fold([LISTED, InstrumentDelisted(occurred_at=LATER, reason="")])
    with pytest.raises(InvalidStateTransitionError):
        decide_resume_instrument(listed, ResumeInstrument(instrument_id=INSTRUMENT_ID), now=LATER)
    with pytest.raises(InvalidStateTransitionError):
        decide_halt_instrument(halted, HaltInstrument(instrument_id=INSTRUMENT_ID), now=LATER)
    for decide, command in [
        (decide_halt_instrument, HaltInstrument(instrument_id=INSTRUMENT_ID)),
        (decide_resume_instrument, ResumeInstrument(instrument_id=INSTRUMENT_ID)),
        (decide_delist_instrument, DelistInstrument(instrument_id=INSTRUMENT_ID)),
    ]:
        with pytest.raises(InvalidStateTransitionError):
            decide(delisted, command, now=LATER)  # type: ignore[operator]
        with pytest.raises(InstrumentNotFoundError):
            decide(None, command, now=LATER)  # type: ignore[operator]
