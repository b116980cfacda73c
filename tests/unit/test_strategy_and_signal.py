"""Strategy and signal: given events / when command / then events."""

from __future__ import annotations

from decimal import Decimal

import pytest

from ledger.domain import instrument as instrument_module
from ledger.domain.errors import (
    AlreadyExistsError,
    InstrumentNotFoundError,
    InstrumentNotTradableError,
    InvalidAmountError,
    InvalidParametersError,
    InvalidSignalError,
    InvalidStateTransitionError,
    InvalidTextError,
    PrecisionExceededError,
    StrategyInactiveError,
    StrategyNotFoundError,
)
from ledger.domain.instrument import InstrumentDelisted, InstrumentHalted, InstrumentListed
from ledger.domain.signal import EmitSignal, SignalAction, SignalEmitted, decide_emit_signal
from ledger.domain.signal import fold as fold_signal
from ledger.domain.strategy import (
    ActivateStrategy,
    ChangeStrategyParameters,
    CreateStrategy,
    DeactivateStrategy,
    StrategyActivated,
    StrategyCreated,
    StrategyDeactivated,
    StrategyParametersChanged,
    decide_activate_strategy,
    decide_change_strategy_parameters,
    decide_create_strategy,
    decide_deactivate_strategy,
    fold,
)
from tests.unit.support import INSTRUMENT_ID, LATER, NOW, SIGNAL_ID, STRATEGY_ID, USER_ID

CREATED = StrategyCreated(
    occurred_at=NOW,
    strategy_id=STRATEGY_ID,
    name="Momentum",
    owner_id=USER_ID,
    parameters={"threshold": "0.25", "window": 20},
)
ACTIVATED = StrategyActivated(occurred_at=NOW)
LISTED = InstrumentListed(
    occurred_at=NOW,
    instrument_id=INSTRUMENT_ID,
    symbol="ACME",
    currency="USD",
    tick_size=Decimal("0.01"),
    lot_size=Decimal("1"),
    price_precision=2,
    quantity_precision=0,
)


def test_create_sorts_parameters_and_starts_inactive() -> None:
    command = CreateStrategy(
        strategy_id=STRATEGY_ID,
        name=" Momentum ",
        owner_id=USER_ID,
        parameters={"window": 20, "threshold": "0.25"},
    )
    events = decide_create_strategy(None, command, now=NOW)
    assert events == [CREATED]
    assert list(CREATED.parameters) == ["threshold", "window"]
    state = fold(events)
    assert state is not None
    assert not state.active


def test_create_twice_or_with_bad_parameters_is_refused() -> None:
    command = CreateStrategy(strategy_id=STRATEGY_ID, name="Momentum", owner_id=USER_ID)
    with pytest.raises(AlreadyExistsError):
        decide_create_strategy(fold([CREATED]), command, now=NOW)
    with pytest.raises(InvalidTextError):
        decide_create_strategy(
            None, CreateStrategy(strategy_id=STRATEGY_ID, name="", owner_id=USER_ID), now=NOW
        )
    for parameters in [
        {"Bad Name": 1},
        {"ratio": 0.5},
        {f"p{i}": i for i in range(65)},
        {"s": "x" * 257},
    ]:
        bad = CreateStrategy(
            strategy_id=STRATEGY_ID,
            name="Momentum",
            owner_id=USER_ID,
            parameters=parameters,  # type: ignore[arg-type]
        )
        with pytest.raises(InvalidParametersError):
            decide_create_strategy(None, bad, now=NOW)


def test_change_parameters_records_only_a_change() -> None:
    state = fold([CREATED])
    same = ChangeStrategyParameters(
        strategy_id=STRATEGY_ID, parameters={"window": 20, "threshold": "0.25"}
    )
    assert decide_change_strategy_parameters(state, same, now=LATER) == []
    new = ChangeStrategyParameters(strategy_id=STRATEGY_ID, parameters={"window": 50})
    assert decide_change_strategy_parameters(state, new, now=LATER) == [
        StrategyParametersChanged(occurred_at=LATER, parameters={"window": 50})
    ]
    with pytest.raises(StrategyNotFoundError):
        decide_change_strategy_parameters(None, new, now=LATER)


def test_activate_and_deactivate() -> None:
    activate = ActivateStrategy(strategy_id=STRATEGY_ID)
    deactivate = DeactivateStrategy(strategy_id=STRATEGY_ID)
    assert decide_activate_strategy(fold([CREATED]), activate, now=NOW) == [ACTIVATED]
    assert decide_deactivate_strategy(fold([CREATED, ACTIVATED]), deactivate, now=LATER) == [
        StrategyDeactivated(occurred_at=LATER)
    ]
    with pytest.raises(InvalidStateTransitionError):
        decide_activate_strategy(fold([CREATED, ACTIVATED]), activate, now=LATER)
    with pytest.raises(InvalidStateTransitionError):
        decide_deactivate_strategy(fold([CREATED]), deactivate, now=LATER)
    with pytest.raises(StrategyNotFoundError):
        decide_activate_strategy(None, activate, now=LATER)


def emit(**changes: object) -> EmitSignal:
    fields: dict[str, object] = {
        "signal_id": SIGNAL_ID,
        "strategy_id": STRATEGY_ID,
        "instrument_id": INSTRUMENT_ID,
        "action": SignalAction.BUY,
        "strength": Decimal("0.75"),
        "reasons": ("crossed the 50-day average",),
        "indicators": {"sma_50": Decimal("101.5"), "rsi": Decimal("61")},
    } | changes
    return EmitSignal(**fields)  # type: ignore[arg-type]


def test_an_active_strategy_emits_a_signal() -> None:
    events = decide_emit_signal(
        None,
        emit(),
        now=NOW,
        strategy=fold([CREATED, ACTIVATED]),
        instrument=instrument_module.fold([LISTED]),
    )
    assert events == [
        SignalEmitted(
            occurred_at=NOW,
            signal_id=SIGNAL_ID,
            strategy_id=STRATEGY_ID,
            instrument_id=INSTRUMENT_ID,
            action=SignalAction.BUY,
            strength=Decimal("0.7500"),
            reasons=("crossed the 50-day average",),
            indicators={"rsi": Decimal("61"), "sma_50": Decimal("101.5")},
        )
    ]
    state = fold_signal(events)
    assert state is not None
    assert state.action is SignalAction.BUY


def test_a_halted_instrument_still_gets_signals() -> None:
    halted = instrument_module.fold([LISTED, InstrumentHalted(occurred_at=NOW, reason="")])
    events = decide_emit_signal(
        None, emit(), now=NOW, strategy=fold([CREATED, ACTIVATED]), instrument=halted
    )
    assert len(events) == 1


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"strength": Decimal("1.5")}, InvalidSignalError),
        ({"strength": Decimal("-0.1")}, InvalidAmountError),
        ({"strength": Decimal("0.12345")}, PrecisionExceededError),
        ({"reasons": ("r",) * 17}, InvalidSignalError),
        ({"reasons": ("",)}, InvalidTextError),
        ({"indicators": {"Bad": Decimal(1)}}, InvalidParametersError),
        ({"indicators": {"nan": Decimal("NaN")}}, InvalidParametersError),
    ],
)
def test_a_malformed_signal_is_refused(changes: dict[str, object], error: type[Exception]) -> None:
    with pytest.raises(error):
        decide_emit_signal(
            None,
            emit(**changes),
            now=NOW,
            strategy=fold([CREATED, ACTIVATED]),
            instrument=instrument_module.fold([LISTED]),
        )


def test_signals_need_an_active_strategy_and_a_listed_instrument() -> None:
    active = fold([CREATED, ACTIVATED])
    listed = instrument_module.fold([LISTED])
    with pytest.raises(StrategyInactiveError):
        decide_emit_signal(None, emit(), now=NOW, strategy=fold([CREATED]), instrument=listed)
    with pytest.raises(StrategyNotFoundError):
        decide_emit_signal(None, emit(), now=NOW, strategy=None, instrument=listed)
    with pytest.raises(InstrumentNotFoundError):
        decide_emit_signal(None, emit(), now=NOW, strategy=active, instrument=None)
    delisted = instrument_module.fold([LISTED, InstrumentDelisted(occurred_at=NOW, reason="")])
    with pytest.raises(InstrumentNotTradableError):
        decide_emit_signal(None, emit(), now=NOW, strategy=active, instrument=delisted)
    emitted = decide_emit_signal(None, emit(), now=NOW, strategy=active, instrument=listed)
    with pytest.raises(AlreadyExistsError):
        decide_emit_signal(
            fold_signal(emitted), emit(), now=NOW, strategy=active, instrument=listed
        )
