"""The reference model for the ledger state machine: exact fractions, no domain helpers.

It restates the issue's rules as plainly as possible (cash, holds, sell
reservations, average cost) so that the state machine can predict every outcome
and compare; and a checked in-memory store that inspects each event on append.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from decimal import Decimal
from fractions import Fraction
from typing import NamedTuple
from uuid import UUID

import msgspec

from ledger.domain import account, order
from ledger.domain.base import Event, decode_event, encode_event
from ledger.domain.order import OrderStatus, OrderType, TimeInForce
from ledger.domain.postings import Direction
from ledger.domain.side import Side
from tests.unit.support import Ledger

COLLAR = Fraction(21, 20)  # Market buys hold at 5% above the reference, rounded up to the tick.
OPEN = (OrderStatus.ACCEPTED, OrderStatus.PARTIALLY_FILLED)
TERMINAL = (OrderStatus.FILLED, OrderStatus.REJECTED, OrderStatus.CANCELLED, OrderStatus.EXPIRED)


class AccountSpec(NamedTuple):
    fee_rate: str
    allow_short_selling: bool
    max_order_notional: str | None


class InstrumentSpec(NamedTuple):
    symbol: str
    tick_size: str
    lot_size: str
    price_precision: int
    quantity_precision: int
    order_unit: Fraction  # Orders are whole multiples of this ...
    fill_unit: Fraction  # ... and partial fills of this, so that remainders are uneven.

    @property
    def tick(self) -> Fraction:
        return Fraction(self.tick_size)

    @property
    def lot(self) -> Fraction:
        return Fraction(self.lot_size)

    def listing(self) -> dict[str, object]:
        return {
            "symbol": self.symbol,
            "tick_size": self.tick_size,
            "lot_size": self.lot_size,
            "price_precision": self.price_precision,
            "quantity_precision": self.quantity_precision,
        }


# Index 0 is what Hypothesis tries most: the short-selling account and the fractional instrument.
ACCOUNTS = (
    AccountSpec(fee_rate="0", allow_short_selling=True, max_order_notional=None),
    AccountSpec(fee_rate="0.001", allow_short_selling=False, max_order_notional=None),
    AccountSpec(fee_rate="0.0025", allow_short_selling=False, max_order_notional="5000"),
)
INSTRUMENTS = (
    InstrumentSpec("FRAC", "0.005", "0.001", 3, 3, Fraction(137, 1000), Fraction(61, 1000)),
    InstrumentSpec("WHOLE", "0.01", "1", 2, 0, Fraction(1), Fraction(1)),
    InstrumentSpec("TENS", "0.05", "10", 2, 0, Fraction(10), Fraction(10)),
)


def cents_up(value: Fraction) -> Fraction:
    return Fraction(math.ceil(value * 100), 100)


def cents_half_even(value: Fraction) -> Fraction:
    return Fraction(round(value * 100), 100)  # round() of a Fraction is half-even.


def ticks_up(value: Fraction, tick: Fraction) -> Fraction:
    return math.ceil(value / tick) * tick


def decimal(value: Fraction, places: int) -> Decimal:
    scaled = value * 10**places
    assert scaled.denominator == 1, f"{value} does not fit {places} places"
    return Decimal(scaled.numerator).scaleb(-places)


class OrderModel(msgspec.Struct, kw_only=True):
    order_id: UUID
    account: int
    instrument: int
    side: Side
    order_type: OrderType
    quantity: Fraction
    time_in_force: TimeInForce
    limit: Fraction | None
    hold_price: Fraction | None
    status: OrderStatus
    accepted: bool
    filled: Fraction = Fraction(0)
    notional: Fraction = Fraction(0)
    fill_ids: list[str] = msgspec.field(default_factory=list)

    @property
    def open_quantity(self) -> Fraction:
        return self.quantity - self.filled


class PositionModel(msgspec.Struct, kw_only=True):
    """Average cost in exact fractions."""

    quantity: Fraction = Fraction(0)
    basis: Fraction = Fraction(0)
    realised: Fraction = Fraction(0)
    flow: Fraction = Fraction(0)  # -sum(signed quantity x price)
    reductions: int = 0

    def trade(self, signed: Fraction, price: Fraction) -> None:
        self.flow -= signed * price
        if self.quantity == 0 or (self.quantity > 0) == (signed > 0):
            self.basis += signed * price
        else:
            self.reductions += 1
            closed = min(abs(signed), abs(self.quantity))
            removed = self.basis * closed / abs(self.quantity)
            self.realised += (1 if self.quantity > 0 else -1) * closed * price - removed
            self.basis -= removed
            if abs(signed) > closed:
                self.basis = (abs(signed) - closed) * price * (1 if signed > 0 else -1)
        self.quantity += signed


class CheckedLedger(Ledger):
    """The in-memory store, checking every event as it is appended.

    It refuses an event on an order stream already in a terminal state and a
    second release of one hold, round-trips each event through its stored form,
    and keeps the per-asset totals and per-account balances of every posting.
    """

    def __init__(self) -> None:
        super().__init__()
        self.totals: Counter[str] = Counter()
        self.balances: Counter[tuple[str, str]] = Counter()
        self.releases: Counter[UUID] = Counter()

    def append(self, stream_id: UUID, stream_type: str, events: Sequence[Event]) -> None:
        for event in events:
            if stream_type == order.STREAM_TYPE:
                current = self.get(stream_id, order.OrderState)
                assert current is None or current.status not in TERMINAL, "event after terminal"
            assert decode_event(type(event).topic(), encode_event(event)) == event
            entry = getattr(event, "entry", None)
            if entry is not None:
                for posting in entry.postings:
                    amount = Fraction(posting.amount)
                    signed = amount if posting.direction is Direction.CREDIT else -amount
                    self.totals[posting.asset] += signed
                    self.balances[(posting.ledger_account, posting.asset)] += signed
            if isinstance(event, account.HoldReleased):
                self.releases[event.order_id] += 1
                assert self.releases[event.order_id] == 1, "a hold released twice"
            super().append(stream_id, stream_type, [event])
