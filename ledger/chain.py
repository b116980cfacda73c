"""The per-stream hash chain.

Each event's hash is sha256(prev_hash || digest), where digest is the SHA-256 of the
event's canonical content below and prev_hash is the hash of the stream's previous
event (32 zero bytes before version 1). Changing any byte of any stored column that
the digest covers, or removing or reordering an event, breaks the chain exactly there.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Protocol
from uuid import UUID

import msgspec

GENESIS = bytes(32)
CANONICAL_FORMAT = "ledger.event.v1"

_encoder = msgspec.json.Encoder()


def content_digest(
    *,
    event_id: UUID,
    stream_id: UUID,
    stream_type: str,
    version: int,
    topic: str,
    schema_version: int,
    recorded_at: datetime,
    actor: str | None,
    correlation_id: UUID | None,
    causation_id: UUID | None,
    idempotency_key: str | None,
    state: bytes,
) -> bytes:
    """SHA-256 of one event's canonical content (every stored column but position and tx)."""
    return Digester(recorded_at, actor, correlation_id, causation_id, idempotency_key).digest(
        event_id, stream_id, stream_type, version, topic, schema_version, state
    )


class Digester:
    """content_digest for the events of one append, which share their metadata: the
    metadata is rendered once, each event then costs its own fields only."""

    __slots__ = ("_actor", "_causation", "_correlation", "_key", "_recorded_at", "_streams")

    def __init__(
        self,
        recorded_at: datetime,
        actor: str | None,
        correlation_id: UUID | None,
        causation_id: UUID | None,
        idempotency_key: str | None,
    ) -> None:
        assert recorded_at.tzinfo is not None, "recorded_at must be timezone-aware"
        self._recorded_at = recorded_at.astimezone(UTC).isoformat(timespec="microseconds")
        self._actor = actor
        self._correlation = None if correlation_id is None else str(correlation_id)
        self._causation = None if causation_id is None else str(causation_id)
        self._key = idempotency_key
        self._streams: dict[UUID, str] = {}

    def digest(
        self,
        event_id: UUID,
        stream_id: UUID,
        stream_type: str,
        version: int,
        topic: str,
        schema_version: int,
        state: bytes,
    ) -> bytes:
        stream = self._streams.get(stream_id)
        if stream is None:
            stream = self._streams[stream_id] = str(stream_id)
        canonical = _encoder.encode(
            [
                CANONICAL_FORMAT,
                str(event_id),
                stream,
                stream_type,
                version,
                topic,
                schema_version,
                self._recorded_at,
                self._actor,
                self._correlation,
                self._causation,
                self._key,
                hashlib.sha256(state).hexdigest(),
            ]
        )
        return hashlib.sha256(canonical).digest()


def link(prev_hash: bytes, digest: bytes) -> bytes:
    """The hash of an event whose predecessor's hash is prev_hash."""
    return hashlib.sha256(prev_hash + digest).digest()


class Break(msgspec.Struct, frozen=True):
    """Where a chain stops holding: the first version whose stored bytes do not check out."""

    version: int
    position: int
    reason: str


class Verification(msgspec.Struct, frozen=True):
    stream_id: UUID
    checked: int
    broken: Break | None

    @property
    def ok(self) -> bool:
        return self.broken is None


class ChainedEvent(Protocol):
    """The columns the chain covers; ledger.store.RecordedEvent has all of them."""

    @property
    def position(self) -> int: ...

    @property
    def event_id(self) -> UUID: ...

    @property
    def stream_id(self) -> UUID: ...

    @property
    def stream_type(self) -> str: ...

    @property
    def version(self) -> int: ...

    @property
    def topic(self) -> str: ...

    @property
    def schema_version(self) -> int: ...

    @property
    def recorded_at(self) -> datetime: ...

    @property
    def actor(self) -> str | None: ...

    @property
    def correlation_id(self) -> UUID | None: ...

    @property
    def causation_id(self) -> UUID | None: ...

    @property
    def idempotency_key(self) -> str | None: ...

    @property
    def data(self) -> bytes: ...

    @property
    def prev_hash(self) -> bytes: ...

    @property
    def hash(self) -> bytes: ...


def verify_chain(
    stream_id: UUID,
    events: Sequence[ChainedEvent],
    *,
    first_version: int = 1,
    previous_hash: bytes = GENESIS,
) -> Verification:
    """Recompute a stream's chain from `first_version`; report the first event that disagrees.

    From version 1 the chain starts at GENESIS. A later start takes `previous_hash`, the
    stored hash of version first_version - 1, on trust: the range that holds that event
    checks it, so consecutive ranges from version 1 check every event.
    """
    assert first_version >= 1, first_version
    assert len(previous_hash) == 32, previous_hash
    assert first_version > 1 or previous_hash == GENESIS, "version 1 follows GENESIS"
    previous = previous_hash
    for offset, event in enumerate(events):
        broken = _check(event, first_version + offset, previous)
        if broken is not None:
            return Verification(stream_id, offset, broken)
        previous = event.hash
    return Verification(stream_id, len(events), None)


def _check(event: ChainedEvent, expected_version: int, previous: bytes) -> Break | None:
    def at(reason: str) -> Break:
        return Break(event.version, event.position, reason)

    if event.version != expected_version:
        return at(f"version {event.version} where {expected_version} was expected")
    if event.prev_hash != previous:
        return at("prev_hash is not the hash of the previous event")
    digest = content_digest(
        event_id=event.event_id,
        stream_id=event.stream_id,
        stream_type=event.stream_type,
        version=event.version,
        topic=event.topic,
        schema_version=event.schema_version,
        recorded_at=event.recorded_at,
        actor=event.actor,
        correlation_id=event.correlation_id,
        causation_id=event.causation_id,
        idempotency_key=event.idempotency_key,
        state=event.data,
    )
    if link(previous, digest) != event.hash:
        return at("content does not match its hash")
    return None
