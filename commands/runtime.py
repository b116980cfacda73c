"""What every command handler shares: load streams, decide, append, retry on a conflict.

A handler loads the streams its decision needs (one query for all of them), calls the
pure decision from ledger.domain, and appends the resulting events to every stream
touched in one transaction, each with the head it was loaded at. If another writer got
there first, the append raises ConcurrencyError and the whole load-decide-append runs
again, a bounded number of times with jittered backoff.

Loaded states are kept in a bounded in-process cache keyed by stream; a load reads only
the events past the cached version, so a long account stream costs one small query.
The cache is a prefix of the log and never trusted beyond it: the append's head check
is what makes a decision on stale state impossible to commit.
"""

from __future__ import annotations

import asyncio
import random
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, Final, TypeVar
from uuid import UUID

import msgspec

from ledger.domain import StreamEvent, decode_event
from ledger.domain.registry import EVOLVERS
from ledger.errors import ConcurrencyError
from ledger.store import NEW_STREAM, AppendResult, Checkpoint, EventStore, NewEvent, StreamHead

ATTEMPTS_MAX: Final = 8
BACKOFF_BASE_S: Final = 0.002
BACKOFF_MAX_S: Final = 0.100
CACHE_STREAMS_MAX: Final = 50_000

T = TypeVar("T")


class CommandContext(msgspec.Struct, frozen=True, kw_only=True):
    """Who asked, and how the request ties to others; recorded on every event appended."""

    actor: str | None = None
    correlation_id: UUID | None = None
    causation_id: UUID | None = None
    idempotency_key: str | None = None
    fingerprint: bytes | None = None


class Loaded(msgspec.Struct, frozen=True):
    """A stream's state as folded from its events, and the head it was folded up to."""

    stream_id: UUID
    stream_type: str
    state: Any
    head: StreamHead


class CommandResult(msgspec.Struct, frozen=True):
    """What a command did: its events (empty for a no-op) and the append's token."""

    events: list[StreamEvent]
    append: AppendResult | None

    @property
    def consistency_token(self) -> Checkpoint | None:
        return None if self.append is None else self.append.token


class StreamCache:
    """A bounded LRU of loaded streams."""

    def __init__(self, size_max: int = CACHE_STREAMS_MAX) -> None:
        assert size_max > 0
        self.size_max = size_max
        self._entries: OrderedDict[UUID, Loaded] = OrderedDict()

    def get(self, stream_id: UUID) -> Loaded | None:
        entry = self._entries.get(stream_id)
        if entry is not None:
            self._entries.move_to_end(stream_id)
        return entry

    def put(self, loaded: Loaded) -> None:
        current = self._entries.get(loaded.stream_id)
        if current is not None and current.head.version > loaded.head.version:
            return  # A concurrent load already cached a later state.
        self._entries[loaded.stream_id] = loaded
        self._entries.move_to_end(loaded.stream_id)
        while len(self._entries) > self.size_max:
            self._entries.popitem(last=False)

    def forget(self, stream_ids: Iterable[UUID]) -> None:
        for stream_id in stream_ids:
            self._entries.pop(stream_id, None)


class Repository:
    """Loads streams into domain states and appends decisions, through the event store."""

    def __init__(self, store: EventStore, cache: StreamCache | None = None) -> None:
        self.store = store
        self.cache = cache if cache is not None else StreamCache()

    async def load(self, wanted: Mapping[UUID, str]) -> dict[UUID, Loaded]:
        """The states of the streams wanted (stream id -> stream type), in one query."""
        start = {
            stream_id: self.cache.get(stream_id) or Loaded(stream_id, kind, None, NEW_STREAM)
            for stream_id, kind in wanted.items()
        }
        after = {stream_id: loaded.head.version for stream_id, loaded in start.items()}
        loaded = dict(start)
        for recorded in await self.store.read_streams_after(after):
            current = loaded[recorded.stream_id]
            assert recorded.stream_type == current.stream_type, (
                f"stream {recorded.stream_id} is a {recorded.stream_type}, "
                f"loaded as a {current.stream_type}"
            )
            event = decode_event(recorded.topic, recorded.data)
            state = EVOLVERS[current.stream_type](current.state, event)
            head = StreamHead(recorded.version, recorded.hash)
            loaded[recorded.stream_id] = Loaded(current.stream_id, current.stream_type, state, head)
        for stream_id, result in loaded.items():
            if result.state is not None:
                self.cache.put(result)
            else:
                assert result is start[stream_id]
        return loaded

    async def save(
        self,
        events: Sequence[StreamEvent],
        loaded: Mapping[UUID, Loaded],
        context: CommandContext,
    ) -> AppendResult:
        """Append a decision's events, each stream expected at the head it was loaded at."""
        new_events = [
            NewEvent(
                stream_id=item.stream_id,
                stream_type=item.stream_type,
                topic=item.event.topic(),
                data=item.event,
                schema_version=item.event.schema_version,
            )
            for item in events
        ]
        expected = {item.stream_id: _head(loaded, item.stream_id) for item in events}
        try:
            result = await self.store.append(
                new_events,
                expected,
                actor=context.actor,
                correlation_id=context.correlation_id,
                causation_id=context.causation_id,
                idempotency_key=context.idempotency_key,
                fingerprint=context.fingerprint,
            )
        except ConcurrencyError:
            self.cache.forget(expected)
            raise
        if result.replayed:
            # The first attempt's events are in the log, not necessarily these: reload later.
            self.cache.forget(expected)
        else:
            self._remember(events, loaded, result)
        return result

    def _remember(
        self, events: Sequence[StreamEvent], loaded: Mapping[UUID, Loaded], result: AppendResult
    ) -> None:
        states = {stream_id: item.state for stream_id, item in loaded.items()}
        for item in events:
            states[item.stream_id] = EVOLVERS[item.stream_type](states[item.stream_id], item.event)
        for item in {item.stream_id: item for item in events}.values():
            head = result.head_of(item.stream_id)
            self.cache.put(Loaded(item.stream_id, item.stream_type, states[item.stream_id], head))


def _head(loaded: Mapping[UUID, Loaded], stream_id: UUID) -> StreamHead:
    assert stream_id in loaded, f"decision touched stream {stream_id}, which was not loaded"
    return loaded[stream_id].head


async def retrying(attempt: Callable[[], Awaitable[T]], *, attempts: int = ATTEMPTS_MAX) -> T:
    """Run load-decide-append again on a concurrency conflict, with jittered backoff."""
    assert attempts >= 1
    for number in range(1, attempts + 1):
        try:
            return await attempt()
        except ConcurrencyError:
            if number == attempts:
                raise
            ceiling = min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2**number)
            await asyncio.sleep(random.uniform(0, ceiling))
    raise AssertionError("unreachable")
