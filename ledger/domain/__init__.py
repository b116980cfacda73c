"""The pure domain of the trading ledger: aggregates, their events and decisions.

No I/O here (no asyncpg, nats, litestar or opentelemetry). One module per
aggregate, each with its ``STREAM_TYPE``, events (frozen msgspec Structs, past
tense), commands (imperative), a frozen state, ``evolve(state, event)``,
``fold(events)`` and ``decide_*`` functions:

- ``user``, ``account``, ``instrument``, ``strategy``, ``signal``, ``position``,
  ``order`` (vocabulary and evolution) with its decisions in ``placement``,
  ``fill`` and ``cancellation``;
- ``base`` (Event, Command, StreamEvent, the topic registry), ``errors``,
  ``money`` (Decimal and every rounding rule), ``postings`` (double entry),
  ``registry`` (stream type -> evolve).

For handler authors (``commands/``): load the streams named below, call the
decision with ``now`` (UTC), append what it returns, all in one transaction with
each stream's expected version. Single-stream decisions return ``list[Event]``
for the command's own stream; order decisions return ``list[StreamEvent]``.

- ``user.decide_register_user(state, cmd, now=, email_taken=)``: look the email up
  (normalised with ``user.normalize_email``); other user decisions need nothing else.
- ``account.decide_open_account(state, cmd, now=, owner=)``: the stream id is
  ``account.account_stream_id(cmd.user_id, cmd.currency)``; ``owner`` is the user.
- ``instrument.decide_list_instrument(state, cmd, now=, symbol_taken=)``.
- ``signal.decide_emit_signal(state, cmd, now=, strategy=, instrument=)``.
- ``placement.decide_place_order(state, cmd, now=, instrument=, account=,
  position=, reference_price=, signal=)``: ``position`` is the stream
  ``position.position_stream_id(cmd.account_id, cmd.instrument_id)`` (None if
  empty); ``reference_price`` (last price) is required for market orders;
  ``signal`` when ``cmd.signal_id`` is set.
- ``fill.decide_fill_order`` and ``cancellation.decide_cancel_order`` /
  ``decide_expire_order`` / ``decide_reject_order``: load the order, then its
  account (``order.account_id``), its position
  (``position_stream_id(order.account_id, order.instrument_id)``) and, for fills,
  its instrument.

A :class:`DomainError` means nothing is to be appended; ``code`` is stable.
"""

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
from ledger.domain.base import (
    Command,
    Event,
    StreamEvent,
    UnknownEventTopicError,
    decode_event,
    encode_event,
    event_topics,
    event_type,
)
from ledger.domain.errors import DomainError

__all__ = [
    "Command",
    "DomainError",
    "Event",
    "StreamEvent",
    "UnknownEventTopicError",
    "account",
    "cancellation",
    "decode_event",
    "encode_event",
    "event_topics",
    "event_type",
    "fill",
    "instrument",
    "order",
    "placement",
    "position",
    "signal",
    "strategy",
    "user",
]
