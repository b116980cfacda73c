"""Replaying the log into page folds: read pages, decode once, fold, write pipelined.

One read of the log feeds every projection being rebuilt. Per page: each event the
projections handle is decoded once (msgspec, a decoder per event class) and folded into
every interested projection's Page (projections/batch.py); then each projection writes
its page on its own connection, in one transaction with its checkpoint, concurrently
with the others. Writes of pages N and N + 1 run while page N + 2 is read and folded
(the fold yields to the event loop every FOLD_SLICE events so the writes make
progress); each projection writes its pages one after the other, and at most
WRITES_IN_FLIGHT pages are being written: memory stays a few pages' worth whatever the
log's length.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import re
import types
import typing
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any, Final, Union
from uuid import UUID

import asyncpg
import msgspec

from ledger.domain import Event, event_type
from ledger.domain.postings import JournalEntry, Posting
from projections import batch
from projections.base import STATEMENT_TIMEOUT_S, Projection, check_schema

PAGE_DEFAULT: Final = 20_000
PAGE_MAX: Final = 50_000
FOLD_SLICE: Final = 2_000
PAGES_READ_AHEAD: Final = 1
# Pages whose writes may be under way at once: the fold of the next page goes on while
# the slowest projection still writes the one before (with one, Python waited for the
# writes a quarter of a 1M-event rebuild). A page in flight holds its rows, not its
# events: about 10 MB more at the default page.
WRITES_IN_FLIGHT: Final = 2

# A page is a range of sequences (gapless, so its size is known), read as ONE value: a
# JSON array of the events, each object its stored payload with the event's place in the
# log spliced in first ("@t" topic, "@s" sequence, "@i" stream id, "@v" version), so that
# msgspec decodes the whole page in one call into the tagged classes below. Events of
# topics no projection here handles come as {"@t": "-", "@s": n}: their sequence
# only, so the page is still checked to be complete. The range, not a LIMIT, bounds the
# page, so every plan is the index range scan whatever the statistics say (a fresh
# log's stale ones once made the planner sort the rest of the log for each page). Each
# event is looked up by its position in a LATERAL subquery that cannot be pulled up
# (OFFSET 0): written as a plain join, the planner hashed the page's positions and read
# ALL of ledger.events for every page, with two parallel workers (a 200k-event log was
# scanned at 35,000 events/s against 92,000 without them, and it grows with the log); on
# 1M events it ran a parallel nested loop, whose workers took cores the rebuild's other
# work needed. The topics handled are written into the statement as a
# constant array, so that the planner hashes it: as a parameter ($3), after five
# executions asyncpg's prepared statement ran a generic plan that compared each event's
# topic with every topic in turn (31 for every projection: 1.5-2 us an event, a third
# of the page's cost).
_PAGE_SQL: Final = """
SELECT '\\x5b'::bytea || coalesce(string_agg(
    CASE WHEN e.topic = ANY({topics}) THEN
        convert_to('{"@t":"' || e.topic || '","@s":' || s.sequence || ',"@i":"'
                   || e.originator_id || '","@v":' || e.originator_version, 'UTF8')
        || CASE WHEN octet_length(e.state) > 2
                THEN '\\x2c'::bytea || substring(e.state FROM 2) ELSE '\\x7d'::bytea END
    ELSE convert_to('{"@t":"-","@s":' || s.sequence || '}', 'UTF8') END,
    '\\x2c'::bytea), ''::bytea) || '\\x5d'::bytea
FROM ledger.sequence s CROSS JOIN LATERAL (
    SELECT e.topic, e.originator_id, e.originator_version, e.state FROM ledger.events e
    WHERE e.notification_id = s.position OFFSET 0) e
WHERE s.sequence > $1 AND s.sequence <= $2"""

# The scratch checkpoint moves only from where the previous page left it: pages are
# contiguous, or the write fails.
_MOVE_CHECKPOINT_SQL: Final = """
UPDATE {schema}.checkpoints SET sequence = $3, updated_at = now()
WHERE projection = $1 AND sequence = $2"""


class Skipped(msgspec.Struct, frozen=True, tag="-", tag_field="@t"):
    """An event no projection being folded handles: only its place is read."""

    sequence: int = msgspec.field(name="@s")


class Entry(msgspec.Struct, frozen=True, kw_only=True):
    """A journal entry's postings, read without JournalEntry's balance check: the domain
    checked it before the append and the hash chain covers the bytes since; the live path
    checks it again on every delivery (a rebuild of a million events would spend a third
    of its time on it)."""

    postings: tuple[Posting, ...] = ()


def _read_as(field_type: Any, computed: bool) -> Any:
    """The type a logged event reads a field as: ids as their text (hashed in C, written
    to uuid columns as they are), entries without the balance check, and numbers and
    times as their JSON text too unless a fold computes with them (`computed`): a value
    passed through to a row is never parsed, and goes in as PostgreSQL reads it."""
    text_types = (UUID,) if computed else (UUID, Decimal, datetime)
    if field_type in text_types:
        return str
    if field_type is JournalEntry:
        return Entry
    if typing.get_origin(field_type) in (Union, types.UnionType) and any(
        argument in text_types for argument in typing.get_args(field_type)
    ):
        return str | None
    return field_type


@functools.cache
def logged_class(event_class: type[Event], computed: frozenset[str] = frozenset()) -> type[Event]:
    """The event class as a page reads it: tagged with its topic, carrying its place in
    the log as `sequence`, `stream_id` and `version` (so the event is its own batch.Meta),
    its fields read as _read_as says. Still an instance of the class."""
    annotations: dict[str, Any] = {"sequence": int, "stream_id": str, "version": int}
    defaults: dict[str, Any] = {
        "sequence": msgspec.field(name="@s"),
        "stream_id": msgspec.field(name="@i"),
        "version": msgspec.field(name="@v"),
    }
    for field in msgspec.structs.fields(event_class):
        read_as = _read_as(field.type, field.name in computed)
        if read_as is not field.type:
            annotations[field.name] = read_as
            if field.default is not msgspec.NODEFAULT:
                defaults[field.name] = field.default

    def body(namespace: dict[str, Any]) -> None:
        namespace.update(defaults, __annotations__=annotations, __module__=__name__)

    options = {"tag": event_class.topic(), "tag_field": "@t", "frozen": True, "kw_only": True}
    return types.new_class(f"Logged{event_class.__name__}", (event_class,), options, body)


class PageGapError(Exception):
    """Raised when a page does not hold every event after the projection's checkpoint."""


class Router:
    """The decoder of pages for some page folds, and where each decoded event goes."""

    def __init__(self, pages: Sequence[batch.Page]) -> None:
        computed: dict[type[Event], set[str]] = {}
        for page in pages:
            for event_class in page.FOLDS:
                assert event_type(event_class.topic()) is event_class, event_class
                computed.setdefault(event_class, set()).update(page.COMPUTED.get(event_class, ()))
        logged = {
            event_class: logged_class(event_class, frozenset(fields))
            for event_class, fields in computed.items()
        }
        # The logged class of each event class handled -> [(page, fold function)]
        self.routes: dict[type[Any], list[tuple[Any, Any]]] = {}
        for page in pages:
            for event_class, fold in page.FOLDS.items():
                self.routes.setdefault(logged[event_class], []).append((page, fold))
        self.topics = sorted(event_class.topic() for event_class in logged)
        self.decoder = _decoder(tuple(sorted(logged.values(), key=lambda kind: kind.__name__)))

    def fold(self, events: Iterable[Any]) -> None:
        """Fold decoded events, in the order given, into their pages."""
        routes = self.routes
        with batch.exact():
            for event in events:
                for page, fold in routes.get(type(event), ()):
                    fold(page, event, event)


@functools.cache
def _decoder(classes: tuple[type[Event], ...]) -> msgspec.json.Decoder[list[Any]]:
    return msgspec.json.Decoder(list[Union[Skipped, *classes]])  # type: ignore[valid-type]


class Folder:
    """Page folds of several projections, each written on its own connection."""

    def __init__(
        self,
        projections: Sequence[Projection],
        connections: Sequence[asyncpg.Connection],
        schema_of: Callable[[str], str],
        after: int,
    ) -> None:
        assert len(projections) == len(connections) >= 1
        self.projections = list(projections)
        self.connections = list(connections)
        self.schemas = [check_schema(schema_of(projection.name)) for projection in projections]
        self.pages: list[batch.Page] = [projection.page() for projection in projections]
        self.staging = [batch.Staging() for _ in projections]
        self.after = after
        self.folded = after
        # Each page's writes, one task per projection, oldest first; a projection's task
        # for a page waits for its task for the page before (one connection each).
        self._writes: collections.deque[list[asyncio.Task[None]]] = collections.deque()
        self.router = Router(self.pages)
        self.topics = self.router.topics

    def decode(self, page: bytes) -> list[Any]:
        """The page's events (logged classes, or Skipped), in sequence order."""
        return self.router.decoder.decode(page)

    async def fold(self, events: list[Any], up_to: int) -> None:
        """Fold a page's events: every sequence after the last page's, up to `up_to`."""
        sequences = [event.sequence for event in events]
        if sequences != list(range(self.folded + 1, up_to + 1)):
            events = sorted(events, key=lambda event: event.sequence)
            if [event.sequence for event in events] != list(range(self.folded + 1, up_to + 1)):
                raise PageGapError(f"the page ({self.folded}, {up_to}] is not every event in it")
        for start in range(0, len(events), FOLD_SLICE):
            self.router.fold(events[start : start + FOLD_SLICE])
            await asyncio.sleep(0)  # The previous page's writes go on meanwhile.
        self.folded = up_to

    async def write(self) -> None:
        """Start writing what has been folded, once fewer than WRITES_IN_FLIGHT pages are
        being written; each projection writes it after its previous page."""
        while len(self._writes) >= WRITES_IN_FLIGHT:
            oldest = self._writes.popleft()
            await asyncio.wait(oldest)
            _raise_first(oldest)
        before, after = self.after, self.folded
        previous = self._writes[-1] if self._writes else [None] * len(self.pages)
        self._writes.append(
            [
                asyncio.ensure_future(
                    self._write_after(previous[index], index, before, after, page.taken())
                )
                for index, page in enumerate(self.pages)
            ]
        )
        self.after = after

    async def wait(self) -> None:
        """Until every page started is written (raising the first error a write raised)."""
        tasks = [task for page in self._writes for task in page]
        self._writes.clear()
        if tasks:
            await asyncio.wait(tasks)
        _raise_first(tasks)

    async def _write_after(
        self, previous: asyncio.Task[None] | None, index: int, before: int, after: int, taken: Any
    ) -> None:
        if previous is not None:
            await previous  # its error is this page's too: the checkpoint is not at `before`
        await self._write(index, before, after, taken)

    async def _write(self, index: int, before: int, after: int, taken: Any) -> None:
        connection, schema = self.connections[index], self.schemas[index]
        name = self.projections[index].name
        in_swap = connection.is_in_transaction()
        async with connection.transaction():
            if not in_swap:
                # A page's commit need not wait for its WAL to reach disk: until the swap
                # (whose commit waits, as ever) nothing reads these tables, and a crash
                # only loses a rebuild to run again.
                await connection.execute("SET LOCAL synchronous_commit = off")
            await self.pages[index].write(connection, schema, self.staging[index], taken)
            status = await connection.execute(
                _MOVE_CHECKPOINT_SQL.format(schema=schema),
                name,
                before,
                after,
                timeout=STATEMENT_TIMEOUT_S,
            )
            if status != "UPDATE 1":
                raise PageGapError(f"{name}: its checkpoint in {schema} is not at {before}")


def _raise_first(tasks: list[asyncio.Task[None]]) -> None:
    """Raise the first error of finished tasks, every error retrieved (a page's error is
    raised again by each later page of its projection)."""
    errors = [task.exception() for task in tasks]
    for error in errors:
        if error is not None:
            raise error


async def read_page(
    connection: asyncpg.Connection, after: int, up_to: int, topics: Sequence[str]
) -> bytes:
    """The events with sequence in (after, up_to] as one JSON array (see _PAGE_SQL)."""
    assert 0 < up_to - after <= PAGE_MAX, (after, up_to)
    page = await connection.fetchval(
        _page_sql(tuple(topics)), after, up_to, timeout=STATEMENT_TIMEOUT_S
    )
    return bytes(page)


_TOPIC: Final = re.compile(r"[A-Za-z0-9_.:]+")


@functools.cache
def _page_sql(topics: tuple[str, ...]) -> str:
    """_PAGE_SQL with `topics` as a constant text[] (each asserted to need no quoting)."""
    assert all(_TOPIC.fullmatch(topic) for topic in topics), topics
    return _PAGE_SQL.replace("{topics}", "'{" + ",".join(topics) + "}'::text[]")


async def replay(
    reader: asyncpg.Connection,
    folder: Folder,
    up_to: int,
    *,
    page: int = PAGE_DEFAULT,
    advance: Callable[[int], None] = lambda count: None,
    pipelined: bool = True,
) -> int:
    """Fold and write the log from the folder's position up to `up_to`; return it.

    Pipelined, the next page is read (on `reader`) while the last is folded and written;
    otherwise (when `reader` is also a writer's connection) one step after the other.
    """
    assert 1 <= page <= PAGE_MAX, page
    # Pages read ahead, then None at the end, or the reader's error: a page it could not
    # read would otherwise never come, and the replay would wait for it for ever.
    pages: asyncio.Queue[tuple[bytes, int] | Exception | None] = asyncio.Queue(PAGES_READ_AHEAD)

    async def read() -> None:
        after = folder.folded
        try:
            while after < up_to:
                end = min(after + page, up_to)
                await pages.put((await read_page(reader, after, end, folder.topics), end))
                after = end
        except Exception as error:
            await pages.put(error)
            return
        await pages.put(None)

    async def fold_and_write(data: bytes, end: int) -> None:
        before = folder.folded
        await folder.fold(folder.decode(data), end)
        await folder.write()
        advance(end - before)

    if pipelined:
        reading = asyncio.create_task(read())
        try:
            while (item := await pages.get()) is not None:
                if isinstance(item, Exception):
                    raise item
                await fold_and_write(*item)
            await reading
        except BaseException:
            with contextlib.suppress(Exception):
                await folder.wait()  # The writes begun end before the error goes up.
            raise
        finally:
            reading.cancel()
    else:
        while folder.folded < up_to:
            await folder.wait()
            end = min(folder.folded + page, up_to)
            await fold_and_write(await read_page(reader, folder.folded, end, folder.topics), end)
    await folder.wait()
    return folder.folded


async def fold_batch(
    connection: asyncpg.Connection, projection: Projection, events: Sequence[Any], schema: str
) -> None:
    """Apply events of the projection (LoggedEvent, in sequence order, all of topics it
    handles) as one page, in the caller's transaction: the live path's way with a large
    batch (engine.apply_batch). Each event's place in the log is spliced into its payload
    as a page read from the database has it."""
    parts = []
    for event in events:
        data = bytes(event.data)
        rest = b"," + data[1:] if len(data) > 2 else b"}"
        parts.append(
            b'{"@t":"%s","@s":%d,"@i":"%s","@v":%d%s'
            % (event.topic.encode(), event.sequence, str(event.stream_id).encode(),
               event.version, rest)
        )  # fmt: skip
    page = projection.page()
    router = Router([page])
    router.fold(router.decoder.decode(b"[" + b",".join(parts) + b"]"))
    # A Staging of its own: the connection may be a pool's, another session each time
    # (CREATE TEMP TABLE IF NOT EXISTS is one round trip per table, and its notice unheard).
    await page.write(connection, schema, batch.Staging(), page.taken())
