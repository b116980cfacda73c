"""Test support: fixed ids and times, and an in-memory ledger that plays the handlers' part.

The :class:`Ledger` loads the states a decision needs, calls the decision and
appends what it returns, stream by stream, exactly as the command handlers will
do against the event store; it keeps every stream's events so that tests can
fold them again and compare.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, TypeVar
from uuid import UUID

import msgspec

from ledger.domain import (
    account,
    cancellation,
    fill,
    instrument,
    order,
    placement,
    position,
    signal,
    strategy,
    user,
)
from ledger.domain.base import Event, StreamEvent
from ledger.domain.registry import EVOLVERS, fold_stream
from ledger.domain.side import Side

NOW = datetime(2025, 1, 6, 14, 30, tzinfo=UTC)
LATER = NOW + timedelta(minutes=1)
PASSWORD_HASH = "$argon2id$v=19$m=65536,t=3,p=4$c29tZXNhbHQ$RdescudvJCsgt3ub+b+dWRWJTmaaJObG"
OTHER_PASSWORD_HASH = "$argon2id$v=19$m=65536,t=3,p=4$b3RoZXJzYWx0$9sTbSlTio3Biev89thdrlKKiCaYsjjYV"

USER_ID = UUID("00000000-0000-4000-8000-000000000001")
OTHER_USER_ID = UUID("00000000-0000-4000-8000-000000000002")
INSTRUMENT_ID = UUID("00000000-0000-4000-8000-0000000000a1")
STRATEGY_ID = UUID("00000000-0000-4000-8000-0000000000b1")
SIGNAL_ID = UUID("00000000-0000-4000-8000-0000000000c1")
ORDER_ID = UUID("00000000-0000-4000-8000-0000000000d1")
OTHER_ORDER_ID = UUID("00000000-0000-4000-8000-0000000000d2")

S = TypeVar("S", bound=msgspec.Struct)


def d(text: str) -> Decimal:
    return Decimal(text)


def encoded(state: msgspec.Struct | None) -> bytes:
    return msgspec.json.encode(state)


class Ledger:
    """An in-memory event store with handler-like helpers; decisions raise as they would."""

    def __init__(self, now: datetime = NOW) -> None:
        self.now = now
        self.streams: dict[UUID, list[Event]] = {}
        self.stream_types: dict[UUID, str] = {}
        self.states: dict[UUID, msgspec.Struct] = {}
        self.log: list[StreamEvent] = []

    # The store --------------------------------------------------------------

    def append(self, stream_id: UUID, stream_type: str, events: Sequence[Event]) -> None:
        assert self.stream_types.setdefault(stream_id, stream_type) == stream_type
        for event in events:
            self.states[stream_id] = EVOLVERS[stream_type](self.states.get(stream_id), event)
            self.streams.setdefault(stream_id, []).append(event)
            self.log.append(StreamEvent(stream_id, stream_type, event))

    def apply(self, decision: Sequence[StreamEvent]) -> list[StreamEvent]:
        for item in decision:
            self.append(item.stream_id, item.stream_type, [item.event])
        return list(decision)

    def get(self, stream_id: UUID, kind: type[S]) -> S | None:
        state = self.states.get(stream_id)
        assert state is None or isinstance(state, kind)
        return state

    def refold(self, stream_id: UUID) -> msgspec.Struct | None:
        return fold_stream(self.stream_types[stream_id], self.streams[stream_id])

    def snapshot(self) -> dict[UUID, bytes]:
        return {stream_id: encoded(state) for stream_id, state in self.states.items()}

    def _single(
        self,
        stream_id: UUID,
        stream_type: str,
        decide: Callable[..., list[Event]],
        *args: Any,
        **kw: Any,
    ) -> list[Event]:
        events = decide(self.states.get(stream_id), *args, now=self.now, **kw)
        self.append(stream_id, stream_type, events)
        return events

    # Setup helpers ----------------------------------------------------------

    def register_user(
        self, user_id: UUID = USER_ID, email: str = "ada@example.com"
    ) -> user.UserState:
        command = user.RegisterUser(
            user_id=user_id,
            email=email,
            display_name="Ada",
            role=user.Role.TRADER,
            password_hash=PASSWORD_HASH,
        )
        self._single(
            user_id, user.STREAM_TYPE, user.decide_register_user, command, email_taken=False
        )
        return self.user(user_id)

    def list_instrument(
        self,
        instrument_id: UUID = INSTRUMENT_ID,
        *,
        symbol: str = "ACME",
        currency: str = "USD",
        tick_size: str = "0.01",
        lot_size: str = "1",
        price_precision: int = 2,
        quantity_precision: int = 0,
    ) -> instrument.InstrumentState:
        command = instrument.ListInstrument(
            instrument_id=instrument_id,
            symbol=symbol,
            currency=currency,
            tick_size=d(tick_size),
            lot_size=d(lot_size),
            price_precision=price_precision,
            quantity_precision=quantity_precision,
        )
        self._single(
            instrument_id,
            instrument.STREAM_TYPE,
            instrument.decide_list_instrument,
            command,
            symbol_taken=False,
        )
        return self.instrument(instrument_id)

    def open_account(
        self,
        user_id: UUID = USER_ID,
        *,
        currency: str = "USD",
        cash: str = "0",
        fee_rate: str = "0",
        allow_short_selling: bool = False,
        max_order_notional: str | None = None,
    ) -> account.AccountState:
        if self.states.get(user_id) is None:
            self.register_user(user_id, email=f"{user_id.hex}@example.com")
        command = account.OpenAccount(
            user_id=user_id,
            currency=currency,
            allow_short_selling=allow_short_selling,
            fee_rate=d(fee_rate),
            max_order_notional=None if max_order_notional is None else d(max_order_notional),
        )
        account_id = account.account_stream_id(user_id, currency)
        self._single(
            account_id,
            account.STREAM_TYPE,
            account.decide_open_account,
            command,
            owner=self.user(user_id),
        )
        if d(cash) > 0:
            self.deposit(account_id, cash)
        return self.account(account_id)

    def deposit(self, account_id: UUID, amount: str) -> list[Event]:
        command = account.Deposit(account_id=account_id, amount=d(amount))
        return self._single(account_id, account.STREAM_TYPE, account.decide_deposit, command)

    def create_active_strategy(self, strategy_id: UUID = STRATEGY_ID) -> strategy.StrategyState:
        create = strategy.CreateStrategy(strategy_id=strategy_id, name="Momentum", owner_id=USER_ID)
        self._single(strategy_id, strategy.STREAM_TYPE, strategy.decide_create_strategy, create)
        activate = strategy.ActivateStrategy(strategy_id=strategy_id)
        self._single(strategy_id, strategy.STREAM_TYPE, strategy.decide_activate_strategy, activate)
        state = self.get(strategy_id, strategy.StrategyState)
        assert state is not None
        return state

    def emit_signal(
        self,
        action: signal.SignalAction,
        signal_id: UUID = SIGNAL_ID,
        instrument_id: UUID = INSTRUMENT_ID,
    ) -> signal.SignalState:
        command = signal.EmitSignal(
            signal_id=signal_id,
            strategy_id=STRATEGY_ID,
            instrument_id=instrument_id,
            action=action,
            strength=d("0.8"),
        )
        self._single(
            signal_id,
            signal.STREAM_TYPE,
            signal.decide_emit_signal,
            command,
            strategy=self.get(STRATEGY_ID, strategy.StrategyState),
            instrument=self.get(instrument_id, instrument.InstrumentState),
        )
        state = self.get(signal_id, signal.SignalState)
        assert state is not None
        return state

    # Typed getters ----------------------------------------------------------

    def user(self, user_id: UUID) -> user.UserState:
        state = self.get(user_id, user.UserState)
        assert state is not None
        return state

    def instrument(self, instrument_id: UUID) -> instrument.InstrumentState:
        state = self.get(instrument_id, instrument.InstrumentState)
        assert state is not None
        return state

    def account(self, account_id: UUID) -> account.AccountState:
        state = self.get(account_id, account.AccountState)
        assert state is not None
        return state

    def order(self, order_id: UUID) -> order.OrderState:
        state = self.get(order_id, order.OrderState)
        assert state is not None
        return state

    def position(self, account_id: UUID, instrument_id: UUID) -> position.PositionState | None:
        return self.get(
            position.position_stream_id(account_id, instrument_id), position.PositionState
        )

    # Order handlers ---------------------------------------------------------

    def decide_place(
        self,
        command: order.PlaceOrder,
        *,
        reference_price: Decimal | None = None,
        signal_state: signal.SignalState | None = None,
    ) -> list[StreamEvent]:
        return placement.decide_place_order(
            self.get(command.order_id, order.OrderState),
            command,
            now=self.now,
            instrument=self.get(command.instrument_id, instrument.InstrumentState),
            account=self.get(command.account_id, account.AccountState),
            position=self.position(command.account_id, command.instrument_id),
            reference_price=reference_price,
            signal=signal_state,
        )

    def place(self, command: order.PlaceOrder, **kw: Any) -> list[StreamEvent]:
        return self.apply(self.decide_place(command, **kw))

    def _order_context(self, order_id: UUID) -> dict[str, Any]:
        state = self.get(order_id, order.OrderState)
        if state is None:
            return {"account": None, "position": None}
        return {
            "account": self.get(state.account_id, account.AccountState),
            "position": self.position(state.account_id, state.instrument_id),
        }

    def decide_fill(self, command: order.FillOrder) -> list[StreamEvent]:
        state = self.get(command.order_id, order.OrderState)
        context = self._order_context(command.order_id)
        instrument_state = None if state is None else self.instrument(state.instrument_id)
        return fill.decide_fill_order(
            state,
            command,
            now=self.now,
            instrument=instrument_state,  # type: ignore[arg-type]
            **context,
        )

    def fill(self, command: order.FillOrder) -> list[StreamEvent]:
        return self.apply(self.decide_fill(command))

    def cancel(self, order_id: UUID, reason: str = "") -> list[StreamEvent]:
        command = order.CancelOrder(order_id=order_id, reason=reason)
        state = self.get(order_id, order.OrderState)
        return self.apply(
            cancellation.decide_cancel_order(
                state, command, now=self.now, **self._order_context(order_id)
            )
        )

    def expire(self, order_id: UUID) -> list[StreamEvent]:
        command = order.ExpireOrder(order_id=order_id)
        state = self.get(order_id, order.OrderState)
        return self.apply(
            cancellation.decide_expire_order(
                state, command, now=self.now, **self._order_context(order_id)
            )
        )

    def reject(self, order_id: UUID, reason: str = "venue says no") -> list[StreamEvent]:
        command = order.RejectOrder(order_id=order_id, reason=reason)
        state = self.get(order_id, order.OrderState)
        return self.apply(
            cancellation.decide_reject_order(
                state, command, now=self.now, **self._order_context(order_id)
            )
        )


def buy_limit(
    account_id: UUID,
    quantity: str,
    price: str,
    *,
    order_id: UUID = ORDER_ID,
    instrument_id: UUID = INSTRUMENT_ID,
    time_in_force: order.TimeInForce = order.TimeInForce.DAY,
) -> order.PlaceOrder:
    return order.PlaceOrder(
        order_id=order_id,
        account_id=account_id,
        instrument_id=instrument_id,
        side=Side.BUY,
        order_type=order.OrderType.LIMIT,
        quantity=d(quantity),
        limit_price=d(price),
        time_in_force=time_in_force,
    )


def sell_limit(
    account_id: UUID,
    quantity: str,
    price: str,
    *,
    order_id: UUID = ORDER_ID,
    instrument_id: UUID = INSTRUMENT_ID,
) -> order.PlaceOrder:
    return order.PlaceOrder(
        order_id=order_id,
        account_id=account_id,
        instrument_id=instrument_id,
        side=Side.SELL,
        order_type=order.OrderType.LIMIT,
        quantity=d(quantity),
        limit_price=d(price),
    )


def fill_of(
    quantity: str,
    price: str,
    *,
    fee: str = "0",
    fill_id: str = "F1",
    order_id: UUID = ORDER_ID,
    executed_at: datetime = NOW,
) -> order.FillOrder:
    return order.FillOrder(
        order_id=order_id,
        fill_id=fill_id,
        quantity=d(quantity),
        price=d(price),
        fee=d(fee),
        venue="XNAS",
        executed_at=executed_at,
    )


def events_of(decision: Sequence[StreamEvent], stream_type: str) -> list[Event]:
    return [item.event for item in decision if item.stream_type == stream_type]


def types_of(decision: Sequence[StreamEvent]) -> list[tuple[str, str]]:
    return [(item.stream_type, type(item.event).__name__) for item in decision]
