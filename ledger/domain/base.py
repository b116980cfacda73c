"""The vocabulary every aggregate shares: events, commands, multi-stream decisions.

An event is a frozen msgspec Struct named in the past tense. Its topic,
``module:qualname``, is what the event store records next to the payload (the
same topic the ``eventsourcing`` library uses), and :func:`event_type` maps a
stored topic back to its class so the payload can be decoded with
``msgspec.json.decode(payload, type=event_type(topic))``.

Every event carries ``occurred_at``, the business time of the fact (passed in as
``now`` by the handler, never read from the clock here). The store records its
own ``recorded_at`` beside it.
"""

from __future__ import annotations

import functools
from datetime import datetime, timedelta
from typing import ClassVar, Final
from uuid import UUID

import msgspec

DOMAIN_PACKAGE: Final = "ledger.domain"


class Event(msgspec.Struct, frozen=True, kw_only=True):
    """Base of every domain event."""

    schema_version: ClassVar[int] = 1

    occurred_at: datetime

    @classmethod
    def topic(cls) -> str:
        return f"{cls.__module__}:{cls.__qualname__}"


class Command(msgspec.Struct, frozen=True, kw_only=True):
    """Base of every command: an imperative request that a decision may refuse."""


class StreamEvent(msgspec.Struct, frozen=True):
    """One event of a decision that touches several streams, with the stream it goes to.

    The handler appends all the events of one decision in one transaction,
    grouped by stream, keeping their order within each stream.
    """

    stream_id: UUID
    stream_type: str
    event: Event


class UnknownEventTopicError(LookupError):
    """Raised when a stored topic names no domain event class."""


def _subclasses(cls: type[Event]) -> list[type[Event]]:
    found: list[type[Event]] = []
    for subclass in cls.__subclasses__():
        found.append(subclass)
        found.extend(_subclasses(subclass))
    return found


@functools.cache
def _registry() -> dict[str, type[Event]]:
    # Importing the package imports every aggregate module, so every event class exists.
    import ledger.domain  # noqa: F401

    registry: dict[str, type[Event]] = {}
    for cls in _subclasses(Event):
        if not cls.__module__.startswith(DOMAIN_PACKAGE + "."):
            continue  # Test doubles and other packages do not belong to the stored vocabulary.
        assert cls.topic() not in registry, f"duplicate event topic {cls.topic()}"
        registry[cls.topic()] = cls
    return registry


def event_type(topic: str) -> type[Event]:
    """The event class stored under ``topic``."""
    try:
        return _registry()[topic]
    except KeyError:
        raise UnknownEventTopicError(topic) from None


def event_topics() -> tuple[str, ...]:
    """Every known topic, sorted."""
    return tuple(sorted(_registry()))


def encode_event(event: Event) -> bytes:
    """The stored payload of ``event`` (JSON; decimals as strings, UUIDs and times as text)."""
    return msgspec.json.encode(event)


def decode_event(topic: str, payload: bytes) -> Event:
    """The event stored as ``payload`` under ``topic``."""
    return msgspec.json.decode(payload, type=event_type(topic))


def assert_utc(moment: datetime) -> None:
    """Programmer-error check: times passed into the domain are timezone-aware UTC."""
    assert moment.tzinfo is not None, "naive datetime passed to the domain"
    assert moment.utcoffset() == timedelta(0), "datetime passed to the domain is not UTC"
