"""The event vocabulary: topics, the registry, round trips, purity of the package."""

from __future__ import annotations

import subprocess
import sys
from decimal import Decimal
from uuid import UUID

import msgspec
import pytest

from ledger.domain import account, instrument, strategy, user
from ledger.domain.base import (
    UnknownEventTopicError,
    decode_event,
    encode_event,
    event_topics,
    event_type,
)
from ledger.domain.errors import DomainError
from ledger.domain.order import OrderPlaced
from ledger.domain.registry import STREAM_TYPES
from ledger.domain.signal import SignalAction
from tests.unit.support import (
    INSTRUMENT_ID,
    OTHER_ORDER_ID,
    OTHER_PASSWORD_HASH,
    STRATEGY_ID,
    USER_ID,
    Ledger,
    buy_limit,
    fill_of,
    sell_limit,
)


def every_event_type() -> Ledger:
    """A short history that records at least one event of every type."""
    ledger = Ledger()
    ledger.register_user()
    ledger._single(
        USER_ID,
        user.STREAM_TYPE,
        user.decide_change_password,
        user.ChangePassword(user_id=USER_ID, password_hash=OTHER_PASSWORD_HASH),
    )
    ledger._single(
        USER_ID,
        user.STREAM_TYPE,
        user.decide_change_role,
        user.ChangeRole(user_id=USER_ID, role=user.Role.ADMIN),
    )
    ledger.list_instrument()
    for decide, command in [
        (instrument.decide_halt_instrument, instrument.HaltInstrument(instrument_id=INSTRUMENT_ID)),
        (
            instrument.decide_resume_instrument,
            instrument.ResumeInstrument(instrument_id=INSTRUMENT_ID),
        ),
    ]:
        ledger._single(INSTRUMENT_ID, instrument.STREAM_TYPE, decide, command)
    ledger.create_active_strategy()
    for decide, command in [
        (
            strategy.decide_change_strategy_parameters,
            strategy.ChangeStrategyParameters(strategy_id=STRATEGY_ID, parameters={"window": 5}),
        ),
        (strategy.decide_deactivate_strategy, strategy.DeactivateStrategy(strategy_id=STRATEGY_ID)),
        (strategy.decide_activate_strategy, strategy.ActivateStrategy(strategy_id=STRATEGY_ID)),
    ]:
        ledger._single(STRATEGY_ID, strategy.STREAM_TYPE, decide, command)
    ledger.emit_signal(SignalAction.BUY)
    account_id = ledger.open_account(cash="1000", fee_rate="0.001").account_id
    for decide, command in [
        (account.decide_withdraw, account.Withdraw(account_id=account_id, amount=Decimal("1"))),
        (
            account.decide_charge_fee,
            account.ChargeFee(account_id=account_id, amount=Decimal("1"), reason="data"),
        ),
    ]:
        ledger._single(account_id, account.STREAM_TYPE, decide, command)
    ledger.place(buy_limit(account_id, "10", "50"))
    ledger.fill(fill_of("4", "50"))
    ledger.fill(fill_of("6", "50", fill_id="F2"))
    ledger.place(sell_limit(account_id, "5", "50", order_id=OTHER_ORDER_ID))
    ledger.cancel(OTHER_ORDER_ID)
    ledger.place(buy_limit(account_id, "1", "10", order_id=UUID(int=3)))
    ledger.expire(UUID(int=3))
    ledger.place(buy_limit(account_id, "1000", "10", order_id=UUID(int=4)))  # rejected: funds
    ledger._single(
        INSTRUMENT_ID,
        instrument.STREAM_TYPE,
        instrument.decide_delist_instrument,
        instrument.DelistInstrument(instrument_id=INSTRUMENT_ID),
    )
    ledger._single(
        USER_ID, user.STREAM_TYPE, user.decide_disable_user, user.DisableUser(user_id=USER_ID)
    )
    return ledger


def _floats(value: object) -> list[float]:
    if isinstance(value, float):
        return [value]
    if isinstance(value, dict):
        return [f for item in value.values() for f in _floats(item)]
    if isinstance(value, list):
        return [f for item in value for f in _floats(item)]
    return []


def test_topics_are_module_and_qualified_name() -> None:
    assert OrderPlaced.topic() == "ledger.domain.order:OrderPlaced"
    assert event_type("ledger.domain.order:OrderPlaced") is OrderPlaced


def test_every_registered_type_is_frozen_past_tense_and_versioned() -> None:
    for topic in event_topics():
        cls = event_type(topic)
        assert cls.topic() == topic
        assert cls.__struct_config__.frozen
        assert cls.__name__.endswith(("ed", "Withdrawn")), cls.__name__
        assert cls.schema_version == 1


def test_an_unknown_topic_is_an_error() -> None:
    with pytest.raises(UnknownEventTopicError):
        event_type("ledger.domain.order:OrderTeleported")


def test_every_event_type_round_trips_through_its_stored_form() -> None:
    ledger = every_event_type()
    recorded = {type(item.event).topic() for item in ledger.log}
    assert recorded == set(event_topics())
    for item in ledger.log:
        payload = encode_event(item.event)
        assert not _floats(msgspec.json.decode(payload)), "no float on the wire"
        assert decode_event(type(item.event).topic(), payload) == item.event


def test_replay_equals_live_for_every_stream() -> None:
    ledger = every_event_type()
    assert set(ledger.stream_types.values()) == set(STREAM_TYPES)
    for stream_id in ledger.streams:
        assert ledger.refold(stream_id) == ledger.states[stream_id]


def test_a_tampered_payload_does_not_decode() -> None:
    ledger = every_event_type()
    settled = next(
        item.event for item in ledger.log if isinstance(item.event, account.TradeSettled)
    )
    payload = encode_event(settled).replace(b'"debit"', b'"credit"', 1)
    with pytest.raises(msgspec.ValidationError):
        decode_event(account.TradeSettled.topic(), payload)


def test_decimals_are_strings_on_the_wire() -> None:
    ledger = every_event_type()
    placed = next(item.event for item in ledger.log if isinstance(item.event, OrderPlaced))
    assert b'"quantity":"10"' in encode_event(placed)
    assert b'"limit_price":"50.00"' in encode_event(placed)


def test_every_domain_error_has_a_stable_code_and_a_docstring() -> None:
    def subclasses(cls: type[DomainError]) -> list[type[DomainError]]:
        return [cls, *(s for sub in cls.__subclasses__() for s in subclasses(sub))]

    errors = subclasses(DomainError)
    codes = [error.code for error in errors]
    assert len(codes) == len(set(codes))
    for error in errors:
        assert error.code.isupper()
        assert error.__doc__
        assert error.__doc__.startswith("Raised when")
    assert {
        "INSUFFICIENT_FUNDS",
        "ORDER_NOT_FOUND",
        "INVALID_STATE_TRANSITION",
        "TICK_SIZE_VIOLATION",
    } <= set(codes)


def test_the_domain_imports_no_io() -> None:
    probe = (
        "import sys, ledger.domain, ledger.domain.registry;"
        "banned = ('asyncpg', 'nats', 'litestar', 'opentelemetry');"
        "print([m for m in sys.modules if m.split('.')[0] in banned])"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
