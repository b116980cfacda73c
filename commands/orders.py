"""Order commands: place, fill, cancel, expire, and the venue's rejection.

Every order decision touches up to three streams, appended in one transaction, each
at the head it was loaded at: the order, its account (cash holds, settlement) and its
position (sell reservations, trades). Two commands that both change an account (two
buys holding cash) or an order (two fills) therefore cannot both commit on the same
state: the second conflicts, loads again and decides on the first one's outcome, so an
account is never overdrawn and an order never overfilled.

Placement loads order, account, instrument, position and the cited signal in one
query. The other commands need the order first to know its account and instrument;
those never change once the order is placed, so when the order is in the cache its
streams are loaded together in one query, and otherwise in two. A fill is first
decided on the cached streams alone, with no query (see fill_order).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import Any, NamedTuple
from uuid import UUID

from commands.edge import (
    Label,
    Reason,
    RequiredLabel,
    RequiredReason,
    UtcTime,
    non_negative,
    optional_positive,
    positive,
)
from commands.runtime import (
    CommandContext,
    CommandResult,
    Decision,
    Ledger,
    Loaded,
    Repository,
    execute,
    wanted,
)
from ledger.domain import account, cancellation, fill, instrument, order, placement, position
from ledger.domain import signal as signal_module
from ledger.domain.base import StreamEvent


class PlaceOrder(order.PlaceOrder, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Place an order. ``reference_price`` is the market price a market order's notional is
    checked at and a market buy's cash is held at (plus the collar); other types ignore it."""

    client_order_id: Label | None = None
    reference_price: Decimal | None = None

    def __post_init__(self) -> None:
        positive(self.quantity, "quantity")
        optional_positive(self.limit_price, "limit_price")
        optional_positive(self.stop_price, "stop_price")
        optional_positive(self.reference_price, "reference_price")


class FillOrder(order.FillOrder, frozen=True, kw_only=True, forbid_unknown_fields=True):
    fill_id: RequiredLabel
    venue: RequiredLabel
    executed_at: UtcTime

    def __post_init__(self) -> None:
        positive(self.quantity, "quantity")
        positive(self.price, "price")
        non_negative(self.fee, "fee")


class CancelOrder(order.CancelOrder, frozen=True, kw_only=True, forbid_unknown_fields=True):
    reason: Reason = ""


class ExpireOrder(order.ExpireOrder, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pass


class RejectOrder(order.RejectOrder, frozen=True, kw_only=True, forbid_unknown_fields=True):
    reason: RequiredReason


class OrderStreams(NamedTuple):
    """An order's stream and its account's, position's and instrument's, as loaded."""

    loaded: dict[UUID, Loaded]
    order: Any
    account: Any
    position: Any
    instrument: Any


def _streams_of(order_id: UUID, account_id: UUID, instrument_id: UUID) -> list[tuple[UUID, str]]:
    return [
        (order_id, order.STREAM_TYPE),
        (account_id, account.STREAM_TYPE),
        (instrument_id, instrument.STREAM_TYPE),
        (position.position_stream_id(account_id, instrument_id), position.STREAM_TYPE),
    ]


def _order_streams(loaded: dict[UUID, Loaded], order_id: UUID, known: Any) -> OrderStreams:
    position_id = position.position_stream_id(known.account_id, known.instrument_id)
    return OrderStreams(
        loaded,
        order=loaded[order_id].state,
        account=loaded[known.account_id].state,
        position=loaded[position_id].state,
        instrument=loaded[known.instrument_id].state,
    )


def cached_order(repository: Repository, order_id: UUID) -> OrderStreams | None:
    """The order and its streams from the cache alone; None unless all four are cached."""
    known = repository.cached_state(order_id, order.STREAM_TYPE)
    if known is None:
        return None
    peeked = repository.peek(wanted(*_streams_of(order_id, known.account_id, known.instrument_id)))
    return None if peeked is None else _order_streams(peeked, order_id, known)


async def load_order(repository: Repository, order_id: UUID) -> OrderStreams:
    """The order and the streams its decisions touch (all None if the order does not exist).

    An order's account and instrument never change, so a cached order, however stale,
    names them, and one query loads all four streams; otherwise the order comes first.
    """
    known = repository.cached_state(order_id, order.STREAM_TYPE)
    if known is None:
        first = await repository.load(wanted((order_id, order.STREAM_TYPE)))
        known = first[order_id].state
        if known is None:
            return OrderStreams(first, None, None, None, None)
    streams = _streams_of(order_id, known.account_id, known.instrument_id)
    return _order_streams(await repository.load(wanted(*streams)), order_id, known)


async def place_order(
    ledger: Ledger, command: PlaceOrder, context: CommandContext, *, now: datetime | None = None
) -> CommandResult:
    """OrderPlaced, then either OrderRejected (a failed risk check, recorded) or
    OrderAccepted with its hold: CashReserved on the account for a buy, or (PositionOpened
    and) SellQuantityReserved on the position for a sell."""
    moment = ledger.now(now)
    streams = _streams_of(command.order_id, command.account_id, command.instrument_id)
    if command.signal_id is not None:
        streams.append((command.signal_id, signal_module.STREAM_TYPE))
    load = wanted(*streams)
    position_id = streams[3][0]

    async def decide() -> Decision:
        loaded = await ledger.repository.load(load)
        events = placement.decide_place_order(
            loaded[command.order_id].state,
            command,
            now=moment,
            instrument=loaded[command.instrument_id].state,
            account=loaded[command.account_id].state,
            position=loaded[position_id].state,
            reference_price=command.reference_price,
            signal=None if command.signal_id is None else loaded[command.signal_id].state,
        )
        return Decision(events, loaded)

    return await execute(ledger, command, context, decide)


async def fill_order(
    ledger: Ledger, command: FillOrder, context: CommandContext, *, now: datetime | None = None
) -> CommandResult:
    """OrderPartiallyFilled or OrderFilled on the order, TradeSettled on the account,
    (PositionOpened and) TradeBooked on the position, and HoldReleased when the fill
    completes a buy. A fill id the order already has appends nothing.

    A fill is first decided on the cached states, without a query: a fill that books
    appends to the order, the account and the position, so the append's head check
    refuses it if any of them moved, and of the instrument it reads only the grid and
    precisions, which never change. The venue reports fills whatever the instrument's
    status, so a halt does not matter here.
    """
    moment = ledger.now(now)

    def decide_on(streams: OrderStreams) -> Decision:
        events = fill.decide_fill_order(
            streams.order,
            command,
            now=moment,
            instrument=streams.instrument,
            account=streams.account,
            position=streams.position,
        )
        return Decision(events, streams.loaded)

    def decide_cached() -> Decision | None:
        streams = cached_order(ledger.repository, command.order_id)
        return None if streams is None else decide_on(streams)

    async def decide() -> Decision:
        return decide_on(await load_order(ledger.repository, command.order_id))

    return await execute(ledger, command, context, decide, decide_cached=decide_cached)


async def cancel_order(
    ledger: Ledger, command: CancelOrder, context: CommandContext, *, now: datetime | None = None
) -> CommandResult:
    """OrderCancelled, and HoldReleased (buy) or SellQuantityReleased (sell) for what it held."""
    moment = ledger.now(now)
    return await _end_order(
        ledger,
        command,
        context,
        lambda streams: cancellation.decide_cancel_order(
            streams.order, command, now=moment, account=streams.account, position=streams.position
        ),
    )


async def expire_order(
    ledger: Ledger, command: ExpireOrder, context: CommandContext, *, now: datetime | None = None
) -> CommandResult:
    """OrderExpired (not for good-till-cancelled orders), and the release of what it held."""
    moment = ledger.now(now)
    return await _end_order(
        ledger,
        command,
        context,
        lambda streams: cancellation.decide_expire_order(
            streams.order, command, now=moment, account=streams.account, position=streams.position
        ),
    )


async def reject_order(
    ledger: Ledger, command: RejectOrder, context: CommandContext, *, now: datetime | None = None
) -> CommandResult:
    """OrderRejected with reason code VENUE_REJECTED (before any fill), and the release."""
    moment = ledger.now(now)
    return await _end_order(
        ledger,
        command,
        context,
        lambda streams: cancellation.decide_reject_order(
            streams.order, command, now=moment, account=streams.account, position=streams.position
        ),
    )


async def _end_order(
    ledger: Ledger,
    command: CancelOrder | ExpireOrder | RejectOrder,
    context: CommandContext,
    end: Callable[[OrderStreams], list[StreamEvent]],
) -> CommandResult:
    async def decide() -> Decision:
        streams = await load_order(ledger.repository, command.order_id)
        return Decision(end(streams), streams.loaded)

    return await execute(ledger, command, context, decide)
