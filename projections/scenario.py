"""A seeded trading session of real domain events, for the projection tests and benchmark.

Each step picks a command at random (register, open, deposit, list, halt, create and
activate strategies, emit signals, place, fill, cancel and expire orders, ...), loads the
streams it needs through commands.runtime.Repository, runs the pure decision and appends
its events with the expected heads, exactly as a command handler does. A decision that
refuses (a DomainError) records nothing, as in production. The clock moves by minutes
to hours between steps, so trades fall on several days.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Final
from uuid import UUID

from commands.runtime import CommandContext, Repository
from ledger.domain import (
    DomainError,
    StreamEvent,
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
from ledger.domain.base import Event
from ledger.domain.side import Side
from ledger.store import EventStore

START: Final = datetime(2025, 3, 3, 13, 0, tzinfo=UTC)
# A well-formed argon2id hash of no one's password: the domain only checks its shape.
PASSWORD_HASH: Final = "$argon2id$v=19$m=65536,t=3,p=4$c29tZXNhbHQ$RdescudvJCsgt3ub+b+dWRWJTmaaJObG"  # noqa: S105
# (symbol prefix, currency, tick, lot, price precision, quantity precision, start price)
LISTINGS: Final = (
    ("EQ", "USD", Decimal("0.01"), Decimal("1"), 2, 0, Decimal("100.00")),
    ("FX", "EUR", Decimal("0.0005"), Decimal("0.001"), 4, 3, Decimal("1.0850")),
    ("CR", "USD", Decimal("0.5"), Decimal("0.0001"), 1, 4, Decimal("64000.0")),
)
CURRENCIES: Final = ("USD", "EUR")


class Scenario:
    """Drives one seeded session against an event store; `run(steps)` appends its events."""

    # (weight, action name) of each step; a subclass may weigh them otherwise.
    WEIGHTS: tuple[tuple[float, str], ...] = (
        (3, "register_user"), (3, "open_account"), (6, "deposit"), (1, "withdraw"),
        (1, "charge_fee"), (2, "list_instrument"), (1, "halt_or_resume"), (1, "user_change"),
        (2, "strategy_change"), (3, "emit_signal"), (14, "place_order"), (14, "fill_order"),
        (3, "end_order"),
    )  # fmt: skip

    def __init__(
        self,
        store: EventStore,
        seed: int,
        *,
        start: datetime = START,
        tag: str = "",
        repository: Repository | None = None,
    ) -> None:
        # Emails and symbols are unique in the read models: sessions sharing a database
        # need tags of their own (or share one on purpose, to make a poison event).
        assert tag == "" or tag.isalnum(), tag
        self.tag = tag.upper()
        self.repository = Repository(store) if repository is None else repository
        self.random = random.Random(seed)
        self.now = start
        self.users: list[UUID] = []
        self.accounts: list[UUID] = []
        self.currencies: dict[UUID, str] = {}  # account id -> its currency
        self.instruments: dict[UUID, int] = {}  # id -> index in LISTINGS
        self.prices: dict[UUID, Decimal] = {}
        self.strategies: list[UUID] = []
        self.signals: list[UUID] = []
        self.orders: dict[UUID, tuple[UUID, UUID]] = {}  # id -> (account, instrument)
        self.recorded = 0  # decisions that appended events

    def new_id(self) -> UUID:
        return UUID(int=self.random.getrandbits(128), version=4)

    async def run(self, steps: int) -> int:
        """Take `steps` steps; return how many decisions appended events."""
        for _ in range(steps):
            await self.step()
        return self.recorded

    async def step(self) -> None:
        """Move the clock by minutes to hours and take one action, picked by weight."""
        self.now += timedelta(minutes=self.random.choice((1, 5, 30, 240)))
        weights = [weight for weight, _ in self.WEIGHTS]
        _, name = self.random.choices(self.WEIGHTS, weights)[0]
        action: Callable[[], Awaitable[None]] = getattr(self, name)
        await action()

    async def decide(
        self,
        wanted: Mapping[UUID, str],
        decision: Callable[[dict[UUID, Any]], list[StreamEvent]],
    ) -> bool:
        """Load, decide, append; False when the decision refused or recorded nothing."""
        loaded = await self.repository.load(wanted)
        try:
            events = decision({stream_id: item.state for stream_id, item in loaded.items()})
        except DomainError:
            return False
        if not events:
            return False
        await self.repository.save(events, loaded, CommandContext(actor="scenario"))
        self.recorded += 1
        return True

    @staticmethod
    def on(stream_id: UUID, stream_type: str, events: list[Event]) -> list[StreamEvent]:
        return [StreamEvent(stream_id, stream_type, event) for event in events]

    def pick(self, items: list[UUID]) -> UUID | None:
        return self.random.choice(items) if items else None

    # Users, accounts, cash --------------------------------------------------------

    async def register_user(self) -> None:
        user_id = self.new_id()
        command = user.RegisterUser(
            user_id=user_id,
            email=f"trader{len(self.users)}{self.tag.lower()}@example.com",
            display_name=f"Trader {len(self.users)}",
            role=user.Role.TRADER,
            password_hash=PASSWORD_HASH,
        )
        decided = await self.decide(
            {user_id: user.STREAM_TYPE},
            lambda s: self.on(
                user_id,
                user.STREAM_TYPE,
                user.decide_register_user(s[user_id], command, now=self.now, email_taken=False),
            ),
        )
        if decided:
            self.users.append(user_id)

    async def user_change(self) -> None:
        user_id = self.pick(self.users)
        if user_id is None:
            return
        roll = self.random.random()

        def decision(s: dict[UUID, Any]) -> list[StreamEvent]:
            state = s[user_id]
            if roll < 0.5:
                command: Any = user.ChangePassword(user_id=user_id, password_hash=PASSWORD_HASH)
                events = user.decide_change_password(state, command, now=self.now)
            elif roll < 0.9:
                role = self.random.choice(list(user.Role))
                events = user.decide_change_role(
                    state, user.ChangeRole(user_id=user_id, role=role), now=self.now
                )
            else:
                command = user.DisableUser(user_id=user_id, reason="scenario")
                events = user.decide_disable_user(state, command, now=self.now)
            return self.on(user_id, user.STREAM_TYPE, events)

        await self.decide({user_id: user.STREAM_TYPE}, decision)

    async def open_account(self) -> None:
        user_id = self.pick(self.users)
        if user_id is None:
            return
        currency = self.random.choice(CURRENCIES)
        account_id = account.account_stream_id(user_id, currency)
        command = account.OpenAccount(
            user_id=user_id,
            currency=currency,
            allow_short_selling=self.random.random() < 0.3,
            fee_rate=self.random.choice((Decimal(0), Decimal("0.001"), Decimal("0.0025"))),
        )
        decided = await self.decide(
            {account_id: account.STREAM_TYPE, user_id: user.STREAM_TYPE},
            lambda s: self.on(
                account_id,
                account.STREAM_TYPE,
                account.decide_open_account(s[account_id], command, now=self.now, owner=s[user_id]),
            ),
        )
        if decided:
            self.accounts.append(account_id)
            self.currencies[account_id] = currency

    async def _cash(self, make: Callable[[UUID, Decimal], Any], decide: Any, top: int) -> None:
        account_id = self.pick(self.accounts)
        if account_id is None:
            return
        amount = Decimal(self.random.randint(1, top * 100)) / 100
        command = make(account_id, amount)
        await self.decide(
            {account_id: account.STREAM_TYPE},
            lambda s: self.on(
                account_id, account.STREAM_TYPE, decide(s[account_id], command, now=self.now)
            ),
        )

    async def deposit(self) -> None:
        await self._cash(
            lambda a, m: account.Deposit(account_id=a, amount=m, reference="wire"),
            account.decide_deposit,
            200_000,
        )

    async def withdraw(self) -> None:
        await self._cash(
            lambda a, m: account.Withdraw(account_id=a, amount=m), account.decide_withdraw, 5_000
        )

    async def charge_fee(self) -> None:
        await self._cash(
            lambda a, m: account.ChargeFee(account_id=a, amount=m, reason="platform"),
            account.decide_charge_fee,
            20,
        )

    # Instruments, strategies, signals ------------------------------------------------

    async def list_instrument(self) -> None:
        index = self.random.randrange(len(LISTINGS))
        prefix, currency, tick, lot, price_precision, quantity_precision, price = LISTINGS[index]
        instrument_id = self.new_id()
        command = instrument.ListInstrument(
            instrument_id=instrument_id,
            symbol=f"{prefix}{len(self.instruments)}{self.tag}",
            currency=currency,
            tick_size=tick,
            lot_size=lot,
            price_precision=price_precision,
            quantity_precision=quantity_precision,
        )
        decided = await self.decide(
            {instrument_id: instrument.STREAM_TYPE},
            lambda s: self.on(
                instrument_id,
                instrument.STREAM_TYPE,
                instrument.decide_list_instrument(
                    s[instrument_id], command, now=self.now, symbol_taken=False
                ),
            ),
        )
        if decided:
            self.instruments[instrument_id] = index
            self.prices[instrument_id] = price

    async def halt_or_resume(self) -> None:
        instrument_id = self.pick(list(self.instruments))
        if instrument_id is None:
            return
        roll = self.random.random()

        def decision(s: dict[UUID, Any]) -> list[StreamEvent]:
            state = s[instrument_id]
            if roll < 0.05:
                command: Any = instrument.DelistInstrument(instrument_id=instrument_id)
                events = instrument.decide_delist_instrument(state, command, now=self.now)
            elif state.status is instrument.InstrumentStatus.HALTED:
                command = instrument.ResumeInstrument(instrument_id=instrument_id)
                events = instrument.decide_resume_instrument(state, command, now=self.now)
            else:
                command = instrument.HaltInstrument(instrument_id=instrument_id, reason="news")
                events = instrument.decide_halt_instrument(state, command, now=self.now)
            return self.on(instrument_id, instrument.STREAM_TYPE, events)

        await self.decide({instrument_id: instrument.STREAM_TYPE}, decision)

    async def strategy_change(self) -> None:
        strategy_id = self.pick(self.strategies)
        owner = self.pick(self.users)
        if strategy_id is None or self.random.random() < 0.3:
            if owner is None:
                return
            strategy_id = self.new_id()
            parameters: dict[str, Any] = {"window": self.random.randint(5, 50), "mode": "fast"}
            command: Any = strategy.CreateStrategy(
                strategy_id=strategy_id, name="momentum", owner_id=owner, parameters=parameters
            )
            decide: Any = strategy.decide_create_strategy
            self.strategies.append(strategy_id)
        elif self.random.random() < 0.3:
            parameters = {"window": self.random.randint(5, 50), "threshold": "0.25"}
            command = strategy.ChangeStrategyParameters(
                strategy_id=strategy_id, parameters=parameters
            )
            decide = strategy.decide_change_strategy_parameters
        else:
            command = strategy.ActivateStrategy(strategy_id=strategy_id)
            decide = strategy.decide_activate_strategy
            if self.random.random() < 0.3:
                command = strategy.DeactivateStrategy(strategy_id=strategy_id)
                decide = strategy.decide_deactivate_strategy
        chosen = strategy_id
        await self.decide(
            {chosen: strategy.STREAM_TYPE},
            lambda s: self.on(
                chosen, strategy.STREAM_TYPE, decide(s[chosen], command, now=self.now)
            ),
        )

    async def emit_signal(self) -> None:
        strategy_id = self.pick(self.strategies)
        instrument_id = self.pick(list(self.instruments))
        if strategy_id is None or instrument_id is None:
            return
        signal_id = self.new_id()
        command = signal.EmitSignal(
            signal_id=signal_id,
            strategy_id=strategy_id,
            instrument_id=instrument_id,
            action=self.random.choice(list(signal.SignalAction)),
            strength=Decimal(self.random.randint(0, 10_000)) / 10_000,
            reasons=("crossover",),
            indicators={"rsi": Decimal(self.random.randint(0, 10_000)) / 100},
        )
        decided = await self.decide(
            {
                signal_id: signal.STREAM_TYPE,
                strategy_id: strategy.STREAM_TYPE,
                instrument_id: instrument.STREAM_TYPE,
            },
            lambda s: self.on(
                signal_id,
                signal.STREAM_TYPE,
                signal.decide_emit_signal(
                    s[signal_id],
                    command,
                    now=self.now,
                    strategy=s[strategy_id],
                    instrument=s[instrument_id],
                ),
            ),
        )
        if decided:
            self.signals.append(signal_id)

    # Orders ---------------------------------------------------------------------------

    def move_price(self, instrument_id: UUID) -> Decimal:
        """A random walk on the instrument's tick grid; the market price now."""
        tick = LISTINGS[self.instruments[instrument_id]][2]
        moved = self.prices[instrument_id] * (1 + Decimal(self.random.randint(-20, 20)) / 1000)
        ticks = max(1, int(moved / tick))
        self.prices[instrument_id] = ticks * tick
        return self.prices[instrument_id]

    def order_streams(
        self, order_id: UUID, account_id: UUID, instrument_id: UUID
    ) -> dict[UUID, str]:
        return {
            order_id: order.STREAM_TYPE,
            account_id: account.STREAM_TYPE,
            instrument_id: instrument.STREAM_TYPE,
            position.position_stream_id(account_id, instrument_id): position.STREAM_TYPE,
        }

    async def place_order(self) -> None:
        account_id = self.pick(self.accounts)
        if account_id is None:
            return
        currency = self.currencies[account_id]
        listed = [i for i, n in self.instruments.items() if LISTINGS[n][1] == currency]
        instrument_id = self.pick(listed)
        if instrument_id is None:
            return
        lot, price = LISTINGS[self.instruments[instrument_id]][3], self.move_price(instrument_id)
        tick = LISTINGS[self.instruments[instrument_id]][2]
        order_type = self.random.choice(
            (order.OrderType.LIMIT, order.OrderType.LIMIT, order.OrderType.MARKET)
        )
        limit = (
            price + tick * self.random.randint(-3, 3)
            if order_type is order.OrderType.LIMIT
            else None
        )
        order_id = self.new_id()
        command = order.PlaceOrder(
            order_id=order_id,
            account_id=account_id,
            instrument_id=instrument_id,
            side=self.random.choice((Side.BUY, Side.BUY, Side.SELL)),
            order_type=order_type,
            quantity=lot * self.random.randint(1, 40),
            limit_price=limit if limit is None or limit > 0 else tick,
            time_in_force=self.random.choice((order.TimeInForce.DAY, order.TimeInForce.IOC)),
            client_order_id=f"c{len(self.orders)}",
        )
        position_id = position.position_stream_id(account_id, instrument_id)
        decided = await self.decide(
            self.order_streams(order_id, account_id, instrument_id),
            lambda s: placement.decide_place_order(
                s[order_id],
                command,
                now=self.now,
                instrument=s[instrument_id],
                account=s[account_id],
                position=s[position_id],
                reference_price=price,
            ),
        )
        if decided:
            self.orders[order_id] = (account_id, instrument_id)

    async def fill_order(self) -> None:
        order_id = self.pick(list(self.orders))
        if order_id is None:
            return
        account_id, instrument_id = self.orders[order_id]
        lot, price = LISTINGS[self.instruments[instrument_id]][3], self.move_price(instrument_id)
        position_id = position.position_stream_id(account_id, instrument_id)
        lots, fee = self.random.randint(1, 40), Decimal(self.random.randint(0, 300)) / 100

        def decision(s: dict[UUID, Any]) -> list[StreamEvent]:
            state = s[order_id]
            if not state.status.open:
                return []
            quantity = min(lot * lots, state.open_quantity)
            if state.side is Side.BUY:
                fill_price = min(price, state.hold_price)
            else:
                fill_price = max(price, state.limit_price or price)
            command = order.FillOrder(
                order_id=order_id,
                fill_id=f"f{self.recorded}",
                quantity=quantity,
                price=fill_price,
                fee=fee,
                venue="XTEST",
                executed_at=self.now - timedelta(seconds=1),
            )
            return fill.decide_fill_order(
                state,
                command,
                now=self.now,
                instrument=s[instrument_id],
                account=s[account_id],
                position=s[position_id],
            )

        await self.decide(self.order_streams(order_id, account_id, instrument_id), decision)

    async def end_order(self) -> None:
        order_id = self.pick(list(self.orders))
        if order_id is None:
            return
        account_id, instrument_id = self.orders[order_id]
        position_id = position.position_stream_id(account_id, instrument_id)
        roll = self.random.random()

        def decision(s: dict[UUID, Any]) -> list[StreamEvent]:
            held = {"account": s[account_id], "position": s[position_id], "now": self.now}
            if roll < 0.7:
                command: Any = order.CancelOrder(order_id=order_id, reason="trader")
                return cancellation.decide_cancel_order(s[order_id], command, **held)
            if roll < 0.9:
                command = order.ExpireOrder(order_id=order_id)
                return cancellation.decide_expire_order(s[order_id], command, **held)
            command = order.RejectOrder(order_id=order_id, reason="venue down")
            return cancellation.decide_reject_order(s[order_id], command, **held)

        await self.decide(self.order_streams(order_id, account_id, instrument_id), decision)
