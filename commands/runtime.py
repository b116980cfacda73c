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

Idempotency: the context's key goes to the store with the events. A retried command
whose decision still stands is answered by the store with the first result; one whose
decision is now refused or empty (the order exists already, the fill id is known) looks
the key up before giving that answer, so a retry always gets the first result back.

Tracing: `execute` runs in a span `command <Type>` (its streams, attempts and outcome)
and each append in a child span `ledger.append`, whose W3C traceparent is stored on the
events appended, so the relay and the projections continue the request's trace.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, NamedTuple, TypeVar
from uuid import UUID

import msgspec
from opentelemetry import trace
from opentelemetry.trace import Span, Status, StatusCode, Tracer

from commands.reads import StreamReader
from ledger import tracing
from ledger.domain import DomainError, Event, StreamEvent, decode_event
from ledger.domain.base import assert_utc
from ledger.domain.errors import ValidationError
from ledger.domain.registry import EVOLVERS
from ledger.errors import ConcurrencyError, LedgerError
from ledger.store import NEW_STREAM, AppendResult, Checkpoint, EventStore, NewEvent, StreamHead

ATTEMPTS_MAX: Final = 8
BACKOFF_BASE_S: Final = 0.002
BACKOFF_MAX_S: Final = 0.100
CACHE_STREAMS_MAX: Final = 50_000
# Span attributes of the command side.
COMMAND: Final = "ledger.command"
OUTCOME: Final = "ledger.outcome"
STREAMS: Final = "ledger.streams"

OUTCOME_SUCCESS: Final = "success"
OUTCOME_REPLAYED: Final = "replayed"
# Any exception that is neither a domain nor a ledger error: its type stays in the log.
OUTCOME_UNEXPECTED: Final = "INTERNAL_ERROR"

T = TypeVar("T")


class WrongStreamTypeError(ValidationError):
    """Raised when a command names, as one kind of aggregate, the id of another kind."""

    code = "WRONG_STREAM_TYPE"

    def __init__(self, stream_id: UUID, actual: str, wanted: str) -> None:
        self.stream_id = stream_id
        super().__init__(f"stream {stream_id} is a {actual}, not a {wanted}")


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
    """What a command did: its events (empty for a no-op) and the append's token.

    For a command answered from its idempotency key, the events are the first
    attempt's, read back from the log, and `append.replayed` is true.
    """

    events: list[StreamEvent]
    append: AppendResult | None

    @property
    def consistency_token(self) -> Checkpoint | None:
        return None if self.append is None else self.append.token

    @property
    def replayed(self) -> bool:
        return self.append is not None and self.append.replayed


NOTHING: Final = CommandResult([], None)


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

    def __len__(self) -> int:
        return len(self._entries)


class Repository:
    """Loads streams into domain states and appends decisions, through the event store."""

    def __init__(
        self,
        store: EventStore,
        cache: StreamCache | None = None,
        reader: StreamReader | None = None,
        tracer: Tracer | None = None,
    ) -> None:
        self.store = store
        self.cache = cache if cache is not None else StreamCache()
        self.reader = reader if reader is not None else StreamReader(store)
        # Without one, the global provider's (a no-op unless the process installed one).
        self.tracer = tracer if tracer is not None else trace.get_tracer(__name__)

    def cached_state(self, stream_id: UUID, stream_type: str) -> Any:
        """The last state this process saw of a stream, perhaps stale; None if not cached
        (or cached as another type, which the next load refuses).

        Only for what never changes once recorded (an order's account and instrument),
        to know which streams to load next without a query.
        """
        entry = self.cache.get(stream_id)
        return None if entry is None or entry.stream_type != stream_type else entry.state

    def peek(self, wanted: Mapping[UUID, str]) -> dict[UUID, Loaded] | None:
        """The cached states of the streams wanted, without a query; None unless all are
        cached (as the type wanted). Perhaps stale: see `execute`'s ``decide_cached``."""
        found: dict[UUID, Loaded] = {}
        for stream_id, kind in wanted.items():
            entry = self.cache.get(stream_id)
            if entry is None or entry.stream_type != kind:
                return None
            found[stream_id] = entry
        return found

    async def load(self, wanted: Mapping[UUID, str]) -> dict[UUID, Loaded]:
        """The states of the streams wanted (stream id -> stream type), in one query
        (shared with the loads made at the same time, see commands.reads)."""
        start = {stream_id: self._start(stream_id, kind) for stream_id, kind in wanted.items()}
        after = {stream_id: loaded.head.version for stream_id, loaded in start.items()}
        loaded = dict(start)
        for recorded in await self.reader.read_after(after):
            current = loaded[recorded.stream_id]
            if recorded.stream_type != current.stream_type:
                raise WrongStreamTypeError(
                    recorded.stream_id, recorded.stream_type, current.stream_type
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

    def _start(self, stream_id: UUID, kind: str) -> Loaded:
        cached = self.cache.get(stream_id)
        if cached is None:
            return Loaded(stream_id, kind, None, NEW_STREAM)
        if cached.stream_type != kind:
            raise WrongStreamTypeError(stream_id, cached.stream_type, kind)
        return cached

    async def save(
        self,
        events: Sequence[StreamEvent],
        loaded: Mapping[UUID, Loaded],
        context: CommandContext,
    ) -> AppendResult:
        """Append a decision's events, each stream expected at the head it was loaded at.

        In a span `ledger.append` whose traceparent is stored with the events."""
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
        with self.tracer.start_as_current_span(
            "ledger.append",
            attributes={STREAMS: [str(stream_id) for stream_id in expected]},
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                result = await self.store.append(
                    new_events,
                    expected,
                    actor=context.actor,
                    correlation_id=context.correlation_id,
                    causation_id=context.causation_id,
                    idempotency_key=context.idempotency_key,
                    fingerprint=context.fingerprint,
                    trace_context=tracing.traceparent_of(span),
                )
            except ConcurrencyError as conflict:
                span.set_attribute(OUTCOME, "conflict")
                # A later version means the cached states are still a prefix of the log,
                # and the retry's load reads only what was appended since. The same version
                # with another hash means a cached head is not the log's: trust none.
                if conflict.actual_version == conflict.expected_version:
                    self.cache.forget(expected)
                raise
            except Exception as error:
                _failed(span, error)
                raise
            span.set_attributes(
                {
                    OUTCOME: "replayed" if result.replayed else "appended",
                    "ledger.events": len(result.events),
                    "ledger.position.last": result.events[-1].position,
                }
            )
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

    async def first_result(self, context: CommandContext) -> CommandResult | None:
        """The first result of the context's idempotency key; None without a key or if unused.

        Raises IdempotencyConflictError when the key was used for another command.
        """
        if context.idempotency_key is None:
            return None
        append = await self.store.replay(context.idempotency_key, context.fingerprint)
        if append is None:
            return None
        return CommandResult(await self.events_of(append), append)

    async def events_of(self, append: AppendResult) -> list[StreamEvent]:
        """The events an append wrote, read back from the log (one query per stream)."""
        versions: dict[UUID, list[int]] = {}
        for appended in append.events:
            versions.setdefault(appended.stream_id, []).append(appended.version)
        found: dict[tuple[UUID, int], StreamEvent] = {}
        for stream_id, numbers in versions.items():
            recorded = await self.store.read_stream(
                stream_id, after_version=min(numbers) - 1, up_to_version=max(numbers)
            )
            for item in recorded:
                event = decode_event(item.topic, item.data)
                found[(stream_id, item.version)] = StreamEvent(stream_id, item.stream_type, event)
        # In log position order, the order in which the append inserted them.
        return [found[(appended.stream_id, appended.version)] for appended in append.events]


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


def utc_now() -> datetime:
    return datetime.now(UTC)


class Executed(NamedTuple):
    """What `execute` reports of each command it ran, for metrics."""

    command: str  # The command's type name, e.g. "PlaceOrder".
    outcome: str  # OUTCOME_SUCCESS, OUTCOME_REPLAYED, or the refusal's error code.
    events_appended: int
    duration_s: float


@dataclass(frozen=True, slots=True)
class Ledger:
    """What every handler needs: the repository, the clock, the bound on attempts.

    Built once by commands.bootstrap.bootstrap; handlers take it as their first argument.
    `on_executed`, if given, hears of every command run through `execute` (it must not
    block or raise: it runs on the command's path).
    """

    repository: Repository
    clock: Callable[[], datetime] = field(default=utc_now)
    attempts_max: int = ATTEMPTS_MAX
    on_executed: Callable[[Executed], None] | None = None

    @property
    def tracer(self) -> Tracer:
        return self.repository.tracer

    def now(self, given: datetime | None = None) -> datetime:
        """The business time of a command: the one given, else the clock's."""
        moment = self.clock() if given is None else given
        assert_utc(moment)
        return moment


class Decision(NamedTuple):
    """A decision's events and the loaded streams they are appended against."""

    events: list[StreamEvent]
    loaded: Mapping[UUID, Loaded]


def wanted(*streams: tuple[UUID, str]) -> dict[UUID, str]:
    """Stream id -> stream type for a load; one id named as two kinds is refused."""
    found: dict[UUID, str] = {}
    for stream_id, kind in streams:
        if found.setdefault(stream_id, kind) != kind:
            raise WrongStreamTypeError(stream_id, found[stream_id], kind)
    return found


def on_stream(loaded: Loaded, events: Iterable[Event]) -> list[StreamEvent]:
    return [StreamEvent(loaded.stream_id, loaded.stream_type, event) for event in events]


def fingerprinted(context: CommandContext, command: msgspec.Struct) -> CommandContext:
    """The context with a fingerprint of the command when it has a key but no fingerprint,
    so that the same key sent with another command is refused rather than replayed."""
    if context.idempotency_key is None or context.fingerprint is not None:
        return context
    kind = f"{type(command).__module__}:{type(command).__qualname__}\n".encode()
    digest = hashlib.sha256(kind + msgspec.json.encode(command)).digest()
    return msgspec.structs.replace(context, fingerprint=digest)


async def execute(
    ledger: Ledger,
    command: msgspec.Struct,
    context: CommandContext,
    decide: Callable[[], Awaitable[Decision]],
    *,
    decide_cached: Callable[[], Decision | None] | None = None,
) -> CommandResult:
    """Load and decide (``decide``), then append, all again on a conflict.

    ``decide_cached``, if given, is tried first, once: a decision on cached states with
    no query at all (None when they are not all cached). It is for decisions whose every
    mutable input is a stream they append to, so the append's head check refuses any
    stale one; what they read of other streams must never change. Only a decision with
    events is taken from it. A refusal or a no-op on cached states might be stale, and
    cached states of different streams may be of different moments (an order older than
    its account), which can trip the domain's assertions: so whatever else the cached
    decision does, it is made again on loaded states, one snapshot of every stream,
    where a real bug raises again.

    A refused or empty decision is checked against the idempotency key first: if the
    key was used, the command was already done and its first result is the answer.
    """
    if ledger.on_executed is None:
        return await _execute(ledger, command, context, decide, decide_cached)
    started = time.perf_counter()
    try:
        result = await _execute(ledger, command, context, decide, decide_cached)
    except (DomainError, LedgerError) as refusal:
        ledger.on_executed(_executed(command, refusal.code, 0, started))
        raise
    except Exception:
        ledger.on_executed(_executed(command, OUTCOME_UNEXPECTED, 0, started))
        raise
    if result.replayed:
        ledger.on_executed(_executed(command, OUTCOME_REPLAYED, 0, started))
    else:
        ledger.on_executed(_executed(command, OUTCOME_SUCCESS, len(result.events), started))
    return result


def _executed(command: msgspec.Struct, outcome: str, events: int, started: float) -> Executed:
    return Executed(type(command).__name__, outcome, events, time.perf_counter() - started)


async def _execute(
    ledger: Ledger,
    command: msgspec.Struct,
    context: CommandContext,
    decide: Callable[[], Awaitable[Decision]],
    decide_cached: Callable[[], Decision | None] | None,
) -> CommandResult:
    context = fingerprinted(context, command)
    repository = ledger.repository
    untried = decide_cached
    attempts = 0
    name = type(command).__name__

    async def attempt() -> CommandResult:
        nonlocal untried, attempts
        attempts += 1
        decision = None if untried is None else _with_events(untried)
        untried = None  # Retries follow a conflict: the cache is behind, load.
        if decision is None:
            try:
                decision = await decide()
            except DomainError:
                first = await repository.first_result(context)
                if first is None:
                    raise
                return first
        if not decision.events:
            return await repository.first_result(context) or NOTHING
        trace.get_current_span().set_attribute(STREAMS, _stream_ids(decision.events))
        append = await repository.save(decision.events, decision.loaded, context)
        if append.replayed:
            return CommandResult(await repository.events_of(append), append)
        return CommandResult(decision.events, append)

    with ledger.tracer.start_as_current_span(
        f"command {name}",
        attributes={COMMAND: name},
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        try:
            result = await retrying(attempt, attempts=ledger.attempts_max)
        except DomainError as refusal:
            span.set_attributes({OUTCOME: "refused", "ledger.error.code": refusal.code})
            raise
        except ConcurrencyError:
            span.set_attribute(OUTCOME, "conflict")
            raise
        except Exception as error:
            _failed(span, error)
            raise
        finally:
            span.set_attribute("ledger.attempts", attempts)
        span.set_attribute(OUTCOME, _outcome_of(result))
        return result


def _outcome_of(result: CommandResult) -> str:
    if result.append is None:
        return "unchanged"
    return "replayed" if result.append.replayed else "appended"


def _stream_ids(events: Iterable[StreamEvent]) -> list[str]:
    return [str(stream_id) for stream_id in dict.fromkeys(item.stream_id for item in events)]


def _failed(span: Span, error: Exception) -> None:
    """Mark a span failed by an unexpected error (a refusal or a conflict is not one)."""
    span.set_attribute(OUTCOME, "failed")
    span.record_exception(error)
    span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))


def _with_events(decide_cached: Callable[[], Decision | None]) -> Decision | None:
    """The cached decision if it has events to append; None to decide on loaded states."""
    try:
        decision = decide_cached()
    except Exception:  # Whatever failed on cached states is decided again (see execute).
        return None
    return decision if decision is not None and decision.events else None


async def execute_on_stream(
    ledger: Ledger,
    command: msgspec.Struct,
    context: CommandContext,
    stream: tuple[UUID, str],
    decide: Callable[[Any], list[Event]],
) -> CommandResult:
    """`execute` for a decision on one stream: ``decide(state) -> events``."""

    async def load_and_decide() -> Decision:
        # Named before deciding, so that a refusal's span says which stream refused.
        trace.get_current_span().set_attribute(STREAMS, [str(stream[0])])
        loaded = await ledger.repository.load(wanted(stream))
        target = loaded[stream[0]]
        return Decision(on_stream(target, decide(target.state)), loaded)

    return await execute(ledger, command, context, load_and_decide)
