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
