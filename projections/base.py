"""What every projection shares: an event as it comes from the log, its metadata, and
the handler table a read-model module is made of."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from typing import Any, Final
from uuid import UUID

import asyncpg
import msgspec

from ledger.domain import Event

STATEMENT_TIMEOUT_S: Final = 10.0
LIVE_SCHEMA: Final = "read"
_SCHEMA_NAME: Final = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def check_schema(schema: str) -> str:
    """`schema`, asserted to be a plain name (it is put into SQL text)."""
    assert _SCHEMA_NAME.fullmatch(schema), f"not a plain schema name: {schema!r}"
    return schema


class EventMeta(msgspec.Struct, frozen=True, kw_only=True):
    """Where an event sits: its global sequence, its stream and version, when recorded."""

    sequence: int
    stream_id: UUID
    stream_type: str
    version: int
    recorded_at: datetime


class LoggedEvent(msgspec.Struct, frozen=True, kw_only=True):
    """An undecoded event with its sequence: what the log and the JetStream body both give.

    Unknown fields of the relay's wire body (event id, hashes, actor) are ignored.
    """

    sequence: int
    stream_id: UUID
    stream_type: str
    version: int
    topic: str
    recorded_at: datetime
    data: msgspec.Raw

    @property
    def meta(self) -> EventMeta:
        return EventMeta(
            sequence=self.sequence,
            stream_id=self.stream_id,
            stream_type=self.stream_type,
            version=self.version,
            recorded_at=self.recorded_at,
        )


Handler = Callable[[asyncpg.Connection, Any, EventMeta], Awaitable[None]]
Handlers = Mapping[type[Event], Handler]


class Projection(msgspec.Struct, frozen=True, kw_only=True):
    """A read model: its name (its checkpoint's key), its tables, its handlers (one
    statement per event, the live path) and its page fold (`page()` makes a
    projections.batch.Page, the rebuild's path)."""

    name: str
    tables: tuple[str, ...]
    handlers: Handlers
    page: Callable[[], Any]

    @property
    def topics(self) -> frozenset[str]:
        """The stored topics it handles; every other event is skipped undecoded."""
        return frozenset(event_class.topic() for event_class in self.handlers)


async def dispatch(
    handlers: Handlers, connection: asyncpg.Connection, event: Event, meta: EventMeta
) -> None:
    """Run the handler of the event's class; an event of no interest changes nothing."""
    handler = handlers.get(type(event))
    if handler is not None:
        await handler(connection, event, meta)


async def execute(connection: asyncpg.Connection, sql: str, *arguments: Any) -> None:
    """One bounded statement of a projection."""
    await connection.execute(sql, *arguments, timeout=STATEMENT_TIMEOUT_S)


_json = msgspec.json.Encoder(decimal_format="string")


def to_json(value: Any) -> str:
    """JSON text for a jsonb column; decimals as strings so they stay exact."""
    return _json.encode(value).decode()


class ReadModelError(Exception):
    """Raised when an event does not fit the read model (a row it needs is missing): a
    poison event for the worker, never skipped."""


def expect_one(status: str, verb: str, what: str) -> None:
    """Raise ReadModelError unless a statement's status says it touched exactly one row."""
    expected = "INSERT 0 1" if verb == "INSERT" else f"{verb} 1"
    if status != expected:
        raise ReadModelError(f"{what}: {status}")
