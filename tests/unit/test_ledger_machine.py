"""A rule-based state machine over deposits, withdrawals, orders, fills, cancels and halts.

Three accounts (one may sell short; different fee rates; one with a maximum
order notional) trade three instruments (fractional quantities on a fine tick,
whole units, lots of ten). Every command goes through the real decisions and the
in-memory store; the reference model (``reference_model``, exact fractions)
predicts each outcome, and after every step the machine checks:

- postings balance per asset over the whole ledger (sum of debits == sum of credits);
- available cash >= 0 and equals the model's and the ledger's; reserved cash
  equals the sum of open holds; a hold is released at most once, and exactly
  once when its buy order ends;
- a refused command leaves every state byte-identical; a recorded risk
  rejection leaves the account and the position untouched;
- position quantity == signed sum of fills == the securities ledger balance;
  sell reservations == unsold quantity of open sells; no short without the right;
- realised P&L - cost basis == -sum(signed quantity x price) exactly, and
  realised P&L matches the exact average-cost reference (exactly when flat);
- filled quantity <= order quantity, and status and fills match the model;
- no event after a terminal state; every event survives its stored form; and,
  at the end, replaying every stream equals its live state.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from fractions import Fraction
from uuid import UUID

from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from ledger.domain import account, instrument
from ledger.domain.base import Event
from ledger.domain.errors import (
    DomainError,
    FillOrKillViolationError,
    InsufficientFundsError,
    InvalidOrderError,
    InvalidStateTransitionError,
    OrderNotExpirableError,
    OverfillError,
    PriceOutsideLimitError,
    ValidationError,
)
from ledger.domain.order import OrderStatus, OrderType, PlaceOrder, TimeInForce
from ledger.domain.position import position_stream_id
from ledger.domain.postings import cash_available, cash_reserved, securities, security_asset
from ledger.domain.side import Side
from tests.unit.reference_model import (
    ACCOUNTS,
    COLLAR,
    INSTRUMENTS,
    OPEN,
    TERMINAL,
    CheckedLedger,
    OrderModel,
    PositionModel,
    cents_half_even,
    cents_up,
    decimal,
    ticks_up,
)
from tests.unit.support import encoded, fill_of

STARTING_CASH = Fraction(10_000)
accounts = st.integers(0, len(ACCOUNTS) - 1)
instruments = st.integers(0, len(INSTRUMENTS) - 1)


class LedgerMachine(RuleBasedStateMachine):
    @initialize()
    def open_the_ledger(self) -> None:
        self.ledger = CheckedLedger()
        self.instrument_ids = [UUID(int=0xA0 + index) for index in range(len(INSTRUMENTS))]
        for instrument_id, spec in zip(self.instrument_ids, INSTRUMENTS, strict=True):
            self.ledger.list_instrument(instrument_id, **spec.listing())  # type: ignore[arg-type]
        self.account_ids = []
        for index, terms in enumerate(ACCOUNTS):
            opened = self.ledger.open_account(UUID(int=0x100 + index), **terms._asdict())  # type: ignore[arg-type]
            self.ledger.deposit(opened.account_id, str(STARTING_CASH))
            self.account_ids.append(opened.account_id)
        self.cash = [STARTING_CASH] * len(ACCOUNTS)
        self.holds: dict[UUID, Fraction] = {}
        self.reserved_sells: dict[UUID, Fraction] = {}
        self.halted = [False] * len(INSTRUMENTS)
        self.orders: list[OrderModel] = []
        self.positions: dict[tuple[int, int], PositionModel] = {}
        self.fill_count = 0
        for who, terms in enumerate(ACCOUNTS):  # A long position to sell from, bought and filled.
            if not terms.allow_short_selling:
                for which, spec in enumerate(INSTRUMENTS):
                    quantity = 10 * spec.order_unit
                    self.place_order(
                        who,
                        which,
                        Side.BUY,
                        OrderType.LIMIT,
                        quantity,
                        (100, 100, 100),
                        TimeInForce.GTC,
                        "whole",
                    )

    # Helpers ----------------------------------------------------------------

    def refused(self, error: type[DomainError], call: Callable[[], object]) -> None:
        """``call`` raises ``error``, and every state stays byte-identical."""
        before, log_length = self.ledger.snapshot(), len(self.ledger.log)
        try:
            call()
        except error:
            event(f"refused: {error.code}")
        else:
            raise AssertionError(f"expected {error.__name__}")
        assert self.ledger.snapshot() == before
        assert len(self.ledger.log) == log_length

    def sellable(self, who: int, which: int) -> Fraction:
        position = self.positions.get((who, which), PositionModel())
        reserved = sum(
            (
                self.reserved_sells.get(model.order_id, Fraction(0))
                for model in self.orders
                if (model.account, model.instrument) == (who, which)
            ),
            Fraction(0),
        )
        return position.quantity - reserved

    def pick(self, index: int, open_only: bool) -> OrderModel | None:
        """Mostly an open order (those can move); sometimes any order, ended ones included."""
        live = [model for model in self.orders if model.status in OPEN]
        candidates = live if open_only and live else self.orders
        return candidates[index % len(candidates)] if candidates else None

    def end(self, model: OrderModel, status: OrderStatus) -> None:
        model.status = status
        if model.order_id in self.holds:
            self.cash[model.account] += self.holds.pop(model.order_id)
        self.reserved_sells.pop(model.order_id, None)

    # Rules: cash and instruments ----------------------------------------------

    @rule(who=accounts, cents=st.integers(1, 500_000), withdraw=st.booleans())
    def move_cash(self, who: int, cents: int, withdraw: bool) -> None:
        amount = Fraction(cents, 100)
        account_id = self.account_ids[who]
        if not withdraw:
            self.ledger.deposit(account_id, str(decimal(amount, 2)))
            self.cash[who] += amount
            return
        command = account.Withdraw(account_id=account_id, amount=decimal(amount, 2))
        state = self.ledger.account(account_id)
        if amount > self.cash[who]:
            self.refused(
                InsufficientFundsError,
                lambda: account.decide_withdraw(state, command, now=self.ledger.now),
            )
            return
        self.ledger.append(
            account_id,
            account.STREAM_TYPE,
            account.decide_withdraw(state, command, now=self.ledger.now),
        )
        self.cash[who] -= amount

    @rule(which=instruments, halt=st.sampled_from([False, True, False]))
    def halt_or_resume(self, which: int, halt: bool) -> None:
        """Halts are rarer than resumptions, so instruments are mostly listed."""
        if not halt and not self.halted[which] and any(self.halted):
            which = self.halted.index(True)
        instrument_id = self.instrument_ids[which]
        state = self.ledger.instrument(instrument_id)
        now = self.ledger.now

        def decide() -> list[Event]:
            if halt:
                command = instrument.HaltInstrument(instrument_id=instrument_id)
                return instrument.decide_halt_instrument(state, command, now=now)
            resume = instrument.ResumeInstrument(instrument_id=instrument_id)
            return instrument.decide_resume_instrument(state, resume, now=now)

        if halt == self.halted[which]:
            self.refused(InvalidStateTransitionError, decide)
            return
        self.ledger.append(instrument_id, instrument.STREAM_TYPE, decide())
        self.halted[which] = halt

    # Rules: placing orders --------------------------------------------------------

    @rule(
        who=accounts,
        which=instruments,
        side=st.sampled_from(Side),
        order_type=st.sampled_from(OrderType),
        units=st.integers(1, 10),
        price_ticks=st.integers(1, 2000),
        stop_ticks=st.integers(1, 2000),
        reference_ticks=st.integers(1, 2000),
        time_in_force=st.sampled_from(TimeInForce),
        malformed=st.sampled_from([None] * 12 + ["lot", "tick", "digits"]),
        execute=st.sampled_from([None, None, "whole", "partial", "split"]),
    )
    def place(
        self,
        who: int,
        which: int,
        side: Side,
        order_type: OrderType,
        units: int,
        price_ticks: int,
        stop_ticks: int,
        reference_ticks: int,
        time_in_force: TimeInForce,
        malformed: str | None,
        execute: str | None,
    ) -> None:
        """Place an order; an accepted one may be executed at once, as a marketable order is."""
        if malformed is not None:
            return self.place_malformed(which, malformed)
        quantity = units * INSTRUMENTS[which].order_unit
        prices = (price_ticks, stop_ticks, reference_ticks)
        return self.place_order(
            who, which, side, order_type, quantity, prices, time_in_force, execute
        )

    @rule(index=st.integers(0, 8), extra=st.integers(1, 5), price_ticks=st.integers(1, 2000))
    def reverse_a_position(self, index: int, extra: int, price_ticks: int) -> None:
        """Trade through zero: flips on the short-selling account, full closes elsewhere."""
        held = [key for key, position in sorted(self.positions.items()) if position.quantity]
        if not held:
            return None
        who, which = held[index % len(held)]
        position = self.positions[(who, which)]
        side = Side.SELL if position.quantity > 0 else Side.BUY
        through = extra * INSTRUMENTS[which].fill_unit if ACCOUNTS[who].allow_short_selling else 0
        prices = (price_ticks, price_ticks, price_ticks)
        quantity = abs(position.quantity) + through
        return self.place_order(
            who, which, side, OrderType.LIMIT, quantity, prices, TimeInForce.DAY, "whole"
        )

    def place_order(
        self,
        who: int,
        which: int,
        side: Side,
        order_type: OrderType,
        quantity: Fraction,
        prices: tuple[int, int, int],
        time_in_force: TimeInForce,
        execute: str | None,
    ) -> None:
        """Place an order, predict whether it is accepted and what it holds, maybe execute it."""
        spec, terms = INSTRUMENTS[which], ACCOUNTS[who]
        price_ticks, stop_ticks, reference_ticks = prices
        has_limit = order_type in (OrderType.LIMIT, OrderType.STOP_LIMIT)
        has_stop = order_type in (OrderType.STOP, OrderType.STOP_LIMIT)
        limit = price_ticks * spec.tick if has_limit else None
        stop = stop_ticks * spec.tick if has_stop else None
        reference = reference_ticks * spec.tick
        order_id = UUID(int=0x1000 + len(self.orders))
        account_id, instrument_id = self.account_ids[who], self.instrument_ids[which]
        command = PlaceOrder(
            order_id=order_id,
            account_id=account_id,
            instrument_id=instrument_id,
            side=side,
            order_type=order_type,
            quantity=decimal(quantity, spec.quantity_precision),
            limit_price=None if limit is None else decimal(limit, spec.price_precision),
            stop_price=None if stop is None else decimal(stop, spec.price_precision),
            time_in_force=time_in_force,
        )
        reference_price = decimal(reference, spec.price_precision)
        if order_type is OrderType.MARKET and time_in_force is TimeInForce.GTC:
            self.refused(
                InvalidOrderError,
                lambda: self.ledger.place(command, reference_price=reference_price),
            )
            return

        # The prediction: the rules, restated.
        risk_price = limit if limit is not None else stop if stop is not None else reference
        hold_price, hold = None, Fraction(0)
        if side is Side.BUY:
            hold_price = (
                limit if limit is not None else ticks_up((stop or reference) * COLLAR, spec.tick)
            )
            notional = quantity * hold_price
            hold = cents_up(notional) + cents_up(notional * Fraction(terms.fee_rate))
        code = None
        if self.halted[which]:
            code = "INSTRUMENT_NOT_TRADABLE"
        elif terms.max_order_notional is not None and quantity * risk_price > Fraction(
            terms.max_order_notional
        ):
            code = "MAX_NOTIONAL_EXCEEDED"
        elif side is Side.BUY and hold > self.cash[who]:
            code = "INSUFFICIENT_FUNDS"
        elif (
            side is Side.SELL
            and not terms.allow_short_selling
            and quantity > self.sellable(who, which)
        ):
            code = "INSUFFICIENT_POSITION"

        position_id = position_stream_id(account_id, instrument_id)
        untouched = (
            encoded(self.ledger.states[account_id]),
            encoded(self.ledger.states.get(position_id)),
        )
        self.ledger.place(command, reference_price=reference_price)
        state = self.ledger.order(order_id)
        model = OrderModel(
            order_id=order_id,
            account=who,
            instrument=which,
            side=side,
            order_type=order_type,
            quantity=quantity,
            time_in_force=time_in_force,
            limit=limit,
            hold_price=hold_price,
            status=state.status,
            accepted=code is None,
        )
        self.orders.append(model)
        event(f"order recorded: {code or 'accepted'}")
        if code is not None:
            assert (state.status, state.reason_code) == (OrderStatus.REJECTED, code)
            after = (
                encoded(self.ledger.states[account_id]),
                encoded(self.ledger.states.get(position_id)),
            )
            assert after == untouched, "a recorded rejection moved cash or a position"
            return
        assert state.status is OrderStatus.ACCEPTED
        if side is Side.BUY:
            assert Fraction(state.hold_amount) == hold
            self.cash[who] -= hold
            self.holds[order_id] = hold
        else:
            self.reserved_sells[order_id] = quantity
        units = 1 + price_ticks % 10
        if execute in ("partial", "split"):
            self.execute(model, "partial", units, price_ticks % 5, fee_cents=units * 7)
        if execute in ("whole", "split") and model.status in OPEN:
            self.execute(model, "whole", units, stop_ticks % 7, fee_cents=units * 3)

    def place_malformed(self, which: int, off: str) -> None:
        spec = INSTRUMENTS[which]
        tick, lot = Decimal(spec.tick_size), Decimal(spec.lot_size)
        quantity, price = lot * 3, tick * 7
        if off == "lot":
            quantity += lot / 2
        elif off == "tick":
            price += tick / 2
        else:
            price += Decimal("0.0001")
        command = PlaceOrder(
            order_id=UUID(int=0xFFFF),
            account_id=self.account_ids[0],
            instrument_id=self.instrument_ids[which],
            side=Side.BUY,
            order_type=OrderType.LIMIT,
            quantity=quantity,
            limit_price=price,
        )
        self.refused(ValidationError, lambda: self.ledger.place(command))

    # Rules: fills -------------------------------------------------------------------

    @rule(
        index=st.integers(0, 63),
        open_only=st.sampled_from([True] * 5 + [False]),
        mode=st.sampled_from(["partial"] * 3 + ["whole"] * 3 + ["over", "outside", "repeat"]),
        units=st.integers(1, 10),
        improve_ticks=st.integers(0, 30),
        fee_cents=st.integers(0, 300),
    )
    def fill(
        self, index: int, open_only: bool, mode: str, units: int, improve_ticks: int, fee_cents: int
    ) -> None:
        if mode == "repeat":
            return self.repeat_a_fill(index)
        model = self.pick(index, open_only)
        if model is not None:
            self.execute(model, mode, units, improve_ticks, fee_cents)
        return None

    def execute(
        self, model: OrderModel, mode: str, units: int, improve_ticks: int, fee_cents: int
    ) -> None:
        """Report a fill of ``model``; predict refusal or the cash, hold and position it moves."""
        which, who = model.instrument, model.account
        spec = INSTRUMENTS[which]
        open_quantity = model.open_quantity
        if mode == "over":
            quantity = open_quantity + spec.lot
        elif mode == "whole" and open_quantity > 0:
            quantity = open_quantity
        else:
            quantity = min(units * spec.fill_unit, open_quantity) or spec.fill_unit
        if (
            model.time_in_force is TimeInForce.FOK
            and mode == "partial"
            and units > 2
            and open_quantity
        ):
            quantity = open_quantity  # Mostly fill FOK orders whole; sometimes try a part.
        outside = False
        if model.side is Side.BUY:
            assert model.hold_price is not None
            improved = model.hold_price - improve_ticks * spec.tick
            price = improved if improved > 0 else model.hold_price
            if mode == "outside":
                price, outside = model.hold_price + spec.tick, True
        else:
            price = (model.limit or 100 * spec.tick) + improve_ticks * spec.tick
            if mode == "outside" and model.limit is not None and model.limit > spec.tick:
                price, outside = model.limit - spec.tick, True
        fee = Fraction(fee_cents, 100)
        self.fill_count += 1
        fill_id = f"F{self.fill_count}"
        command = fill_of(
            str(decimal(quantity, spec.quantity_precision)),
            str(decimal(price, spec.price_precision)),
            fee=str(decimal(fee, 2)),
            fill_id=fill_id,
            order_id=model.order_id,
        )

        def attempt() -> object:
            return self.ledger.fill(command)

        if model.status not in OPEN:
            return self.refused(InvalidStateTransitionError, attempt)
        if quantity > open_quantity:
            return self.refused(OverfillError, attempt)
        if model.time_in_force is TimeInForce.FOK and quantity != model.quantity:
            return self.refused(FillOrKillViolationError, attempt)
        if outside:
            return self.refused(PriceOutsideLimitError, attempt)
        cash = cents_half_even(model.notional + quantity * price) - cents_half_even(model.notional)
        if model.side is Side.BUY:
            need = cash + fee
            from_hold = min(need, self.holds[model.order_id])
            if need - from_hold > self.cash[who]:
                return self.refused(InsufficientFundsError, attempt)
            self.holds[model.order_id] -= from_hold
            self.cash[who] -= need - from_hold
        else:
            if fee > self.cash[who] + cash:
                return self.refused(InsufficientFundsError, attempt)
            self.cash[who] += cash - fee
            self.reserved_sells[model.order_id] -= quantity
        attempt()
        model.filled += quantity
        model.notional += quantity * price
        model.fill_ids.append(fill_id)
        event(f"fill booked: {model.side} {'complete' if model.open_quantity == 0 else 'partial'}")
        position = self.positions.setdefault((who, which), PositionModel())
        before = position.quantity
        position.trade(model.side.sign * quantity, price)
        if before * position.quantity < 0:
            event("position flipped")
        elif before and abs(position.quantity) < abs(before):
            event("position reduced")
        if model.open_quantity == 0:
            self.end(model, OrderStatus.FILLED)
        else:
            model.status = OrderStatus.PARTIALLY_FILLED
        return None

    def repeat_a_fill(self, index: int) -> None:
        """A fill id the order already has: the decision is [], and nothing changes."""
        filled = [model for model in self.orders if model.fill_ids]
        if not filled:
            return
        model = filled[index % len(filled)]
        fill_id = model.fill_ids[index % len(model.fill_ids)]
        before = self.ledger.snapshot()
        assert self.ledger.fill(fill_of("1", "1", fill_id=fill_id, order_id=model.order_id)) == []
        assert self.ledger.snapshot() == before

    # Rules: ending orders -------------------------------------------------------------

    @rule(
        index=st.integers(0, 63),
        open_only=st.sampled_from([True] * 3 + [False]),
        how=st.sampled_from(["cancel", "expire", "reject"]),
    )
    def end_order(self, index: int, open_only: bool, how: str) -> None:
        model = self.pick(index, open_only)
        if model is None:
            return
        end = {
            "cancel": self.ledger.cancel,
            "expire": self.ledger.expire,
            "reject": self.ledger.reject,
        }[how]
        status = {
            "cancel": OrderStatus.CANCELLED,
            "expire": OrderStatus.EXPIRED,
            "reject": OrderStatus.REJECTED,
        }[how]
        allowed_from = (
            (OrderStatus.NEW, OrderStatus.ACCEPTED) if how == "reject" else (OrderStatus.NEW, *OPEN)
        )
        if model.status not in allowed_from:
            self.refused(InvalidStateTransitionError, lambda: end(model.order_id))
        elif how == "expire" and model.time_in_force is TimeInForce.GTC:
            self.refused(OrderNotExpirableError, lambda: end(model.order_id))
        else:
            end(model.order_id)
            self.end(model, status)

    # Invariants ---------------------------------------------------------------------

    @invariant()
    def postings_balance_per_asset(self) -> None:
        assert all(total == 0 for total in self.ledger.totals.values()), self.ledger.totals

    @invariant()
    def cash_matches_the_model_the_ledger_and_the_holds(self) -> None:
        for who, account_id in enumerate(self.account_ids):
            state = self.ledger.account(account_id)
            assert state.available >= 0
            assert Fraction(state.available) == self.cash[who]
            assert (
                Fraction(state.available)
                == self.ledger.balances[(cash_available(account_id), "USD")]
            )
            holds = {hold.order_id: Fraction(hold.amount) for hold in state.holds}
            expected = {
                m.order_id: self.holds[m.order_id]
                for m in self.orders
                if m.account == who and m.order_id in self.holds
            }
            assert holds == expected
            assert Fraction(state.reserved) == sum(holds.values())
            assert (
                Fraction(state.reserved) == self.ledger.balances[(cash_reserved(account_id), "USD")]
            )

    @invariant()
    def a_hold_is_released_once_when_its_order_ends(self) -> None:
        for model in self.orders:
            held = model.side is Side.BUY and model.accepted
            assert self.ledger.releases[model.order_id] == (
                1 if held and model.status in TERMINAL else 0
            )

    @invariant()
    def positions_match_fills_the_ledger_and_the_reference(self) -> None:
        for (who, account_id), (which, instrument_id) in (
            (a, i) for a in enumerate(self.account_ids) for i in enumerate(self.instrument_ids)
        ):
            state = self.ledger.position(account_id, instrument_id)
            model = self.positions.get((who, which), PositionModel())
            if state is None:
                assert model.quantity == 0
                continue
            units = self.ledger.balances[
                (securities(account_id, instrument_id), security_asset(instrument_id))
            ]
            assert Fraction(state.quantity) == model.quantity == units
            assert Fraction(state.realised_pnl) - Fraction(state.cost_basis) == model.flow
            spec = INSTRUMENTS[which]
            half_step = Fraction(1, 2 * 10 ** (spec.price_precision + spec.quantity_precision))
            assert (
                abs(Fraction(state.realised_pnl) - model.realised) <= model.reductions * half_step
            )
            if model.quantity == 0:
                assert state.cost_basis == 0
                assert Fraction(state.realised_pnl) == model.realised
            if not ACCOUNTS[who].allow_short_selling:
                assert 0 <= state.reserved_quantity <= state.quantity
            reservations = {r.order_id: Fraction(r.quantity) for r in state.reservations}
            expected = {
                m.order_id: self.reserved_sells[m.order_id]
                for m in self.orders
                if (m.account, m.instrument) == (who, which) and self.reserved_sells.get(m.order_id)
            }
            assert reservations == expected

    @invariant()
    def orders_match_the_model(self) -> None:
        for model in self.orders:
            state = self.ledger.order(model.order_id)
            assert state.status is model.status
            assert state.filled_quantity <= state.quantity
            assert Fraction(state.filled_quantity) == model.filled <= model.quantity
            assert list(state.fill_ids) == model.fill_ids

    def teardown(self) -> None:
        ledger = getattr(self, "ledger", None)
        for stream_id in ledger.streams if ledger is not None else ():
            assert ledger.refold(stream_id) == ledger.states[stream_id], "replay differs from live"


LedgerMachine.TestCase.settings = settings(
    max_examples=200,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestLedgerMachine = LedgerMachine.TestCase
