"""Rebuild read models from ledger.events, into fresh tables swapped in atomically.

Source: the log in global order, ledger.sequence JOIN ledger.events, read in bounded
keyset pages, never NATS. Each projection gets a scratch schema `read_rebuild_<name>`
holding empty copies of its tables (CREATE TABLE ... LIKE read.<table> INCLUDING ALL:
same columns, defaults, constraints and index names) and its own checkpoints table. The
log is read once for every projection rebuilt and folded a page at a time
(projections/folding.py, projections/batch.py): each row a page touches is written once,
created rows with COPY, so a rebuild runs at the speed of reading the log rather than
of one statement per event. Progress (events/s, ETA) goes to stderr.

Once at the head it read first, the rebuild catches up with what was appended meanwhile
(at most CATCH_UP_ROUNDS_MAX more passes) until fewer than SWAP_BEHIND_MAX events are
left, then swaps each projection in. The swap is one transaction: lock the live
checkpoint row (the live worker of that projection waits), fold the scratch tables up to
the log's head, move the live tables to `read_retired_<name>`, move the fresh ones into
`read`, copy the live tables' grants, set the live checkpoint to the rebuilt one and drop
the old tables. Until it commits, the API reads the old tables; a swap that cannot get
its locks within LOCK_TIMEOUT_S is rolled back and retried.

Catch-up of the live worker: the scratch checkpoint is at least the live one (both
apply only sequenced events, and the scratch is folded up to the head inside the swap's
lock), so the live worker resumes past it. Its durable consumer has not moved: what
JetStream delivers next is either at or below the new checkpoint (skipped and acked by
the engine, the tables already hold it) or after it (applied once, to the new tables).
An event the worker was applying when the swap began is in the old tables and in the
rebuilt ones alike; nothing is applied twice and nothing is skipped.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterable
from typing import Final, TextIO

import asyncpg
import msgspec

from projections import scratch, source
from projections.base import STATEMENT_TIMEOUT_S, Projection
from projections.engine import LIVE_SCHEMA, read_checkpoint
from projections.folding import PAGE_DEFAULT, PAGE_MAX, Folder, replay
from projections.progress import Progress
from projections.registry import select

BATCH_DEFAULT: Final = PAGE_DEFAULT
LOCK_TIMEOUT_S: Final = 5.0
SWAP_ATTEMPTS_MAX: Final = 5
# Left for the swap's transaction, which holds the live checkpoint row meanwhile.
SWAP_BEHIND_MAX: Final = 2_000
CATCH_UP_ROUNDS_MAX: Final = 10
GC_THRESHOLD: Final = 200_000
# Advisory lock class of "a rebuild of projection <hashtext(name)> is running".
REBUILD_LOCK_CLASS: Final = 0x1ED6E7


class RebuildError(Exception):
    """Raised when a rebuild cannot start (another is running) or cannot swap in."""


class Rebuilt(msgspec.Struct, frozen=True):
    """One projection rebuilt: its new checkpoint and the events read to get there."""

    name: str
    sequence: int
    events: int
    seconds: float


def scratch_schema(name: str) -> str:
    return f"read_rebuild_{name}"


def retired_schema(name: str) -> str:
    return f"read_retired_{name}"


async def rebuild(
    database_url: str,
    names: Iterable[str],
    *,
    batch: int = BATCH_DEFAULT,
    out: TextIO | None = None,
) -> list[Rebuilt]:
    """`ledger project --rebuild NAME|all`: rebuild the projections named, then swap them in.

    `batch` is the page: how many events are read, folded and written at a time."""
    assert 1 <= batch <= PAGE_MAX, batch
    projections = select(names)
    reader = await asyncpg.connect(database_url)
    writers = [await asyncpg.connect(database_url) for _ in projections]
    collecting = gc.get_threshold()
    try:
        deferred = []
        for writer, projection in zip(writers, projections, strict=True):
            await _lock(writer, projection.name)
            await writer.execute(f"DROP SCHEMA IF EXISTS {retired_schema(projection.name)} CASCADE")
            deferred.append(
                await scratch.prepare(writer, projection, scratch_schema(projection.name))
            )
        loop = asyncio.get_running_loop()
        started = loop.time()
        # A page is tens of thousands of short-lived objects with no cycles among them; at
        # the collector's default pace (every 700 allocations, over everything alive) it
        # took 10 % of a rebuild. Objects alive now are frozen out of its scans.
        gc.freeze()
        gc.set_threshold(GC_THRESHOLD, *collecting[1:])
        events = await _replay(reader, writers, projections, batch, out)
        await asyncio.gather(
            *(
                scratch.index(writer, statements)
                for writer, statements in zip(writers, deferred, strict=True)
            )
        )
        results = []
        for writer, projection in zip(writers, projections, strict=True):
            sequence = await _swap_retrying(writer, projection, batch)
            results.append(Rebuilt(projection.name, sequence, events, loop.time() - started))
        return results
    finally:
        gc.set_threshold(*collecting)
        gc.unfreeze()
        for connection in (reader, *writers):
            await connection.close(timeout=STATEMENT_TIMEOUT_S)


async def _lock(connection: asyncpg.Connection, name: str) -> None:
    """Hold, for the connection's life, the lock saying this projection is being rebuilt."""
    locked = await connection.fetchval(
        "SELECT pg_try_advisory_lock($1, hashtext($2))",
        REBUILD_LOCK_CLASS,
        name,
        timeout=STATEMENT_TIMEOUT_S,
    )
    if not locked:
        raise RebuildError(f"a rebuild of {name} is already running")


async def _replay(
    reader: asyncpg.Connection,
    writers: list[asyncpg.Connection],
    projections: list[Projection],
    batch: int,
    out: TextIO | None,
) -> int:
    """Fold the log up to its head into every scratch schema, then catch up with what was
    appended meanwhile until the swaps have little left; return the events read."""
    folder = Folder(projections, writers, scratch_schema, after=0)
    target = await source.head(reader)
    label = "rebuild " + ",".join(projection.name for projection in projections)
    progress = Progress(label, target, out)
    await replay(reader, folder, target, page=batch, advance=progress.advance)
    for _ in range(CATCH_UP_ROUNDS_MAX):
        head = await source.head(reader)
        if head - folder.folded <= SWAP_BEHIND_MAX:
            break
        progress.total = head
        await replay(reader, folder, head, page=batch, advance=progress.advance)
    progress.finish()
    return progress.done


async def _swap_retrying(connection: asyncpg.Connection, projection: Projection, batch: int) -> int:
    for attempt in range(1, SWAP_ATTEMPTS_MAX + 1):
        try:
            return await swap(connection, projection, batch=batch)
        except asyncpg.LockNotAvailableError as error:
            if attempt == SWAP_ATTEMPTS_MAX:
                raise RebuildError(f"{projection.name}: swap could not get its locks") from error
            await asyncio.sleep(0.1 * 2**attempt)
    raise AssertionError("unreachable")


_GRANTS_SQL: Final = """
SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE a.grantee::regrole::text END,
       a.privilege_type
FROM pg_class c, aclexplode(c.relacl) a
WHERE c.oid = $1::regclass AND a.grantee <> c.relowner"""


async def swap(connection: asyncpg.Connection, projection: Projection, *, batch: int) -> int:
    """Fold the scratch tables up to the head and swap them in; return the new checkpoint."""
    name = projection.name
    fresh, retired = scratch_schema(name), retired_schema(name)
    async with connection.transaction():
        await connection.execute(f"SET LOCAL lock_timeout = '{int(LOCK_TIMEOUT_S * 1000)}ms'")
        await connection.execute(
            "INSERT INTO read.checkpoints (projection) VALUES ($1) ON CONFLICT DO NOTHING", name
        )
        live = await connection.fetchval(
            "SELECT sequence FROM read.checkpoints WHERE projection = $1 FOR UPDATE", name
        )
        rebuilt = await read_checkpoint(connection, name, schema=fresh)
        head = await source.head(connection)
        if head > rebuilt:
            tail = Folder([projection], [connection], scratch_schema, after=rebuilt)
            rebuilt = await replay(connection, tail, head, page=batch, pipelined=False)
        assert rebuilt >= live, (name, rebuilt, live)
        await connection.execute(f"CREATE SCHEMA {retired}")
        for table in projection.tables:
            grants = await connection.fetch(_GRANTS_SQL, f"{LIVE_SCHEMA}.{table}")
            await connection.execute(f"ALTER TABLE {LIVE_SCHEMA}.{table} SET SCHEMA {retired}")
            await connection.execute(f"ALTER TABLE {fresh}.{table} SET SCHEMA {LIVE_SCHEMA}")
            for grantee, privilege in grants:
                await connection.execute(f"GRANT {privilege} ON {LIVE_SCHEMA}.{table} TO {grantee}")
        await connection.execute(
            "UPDATE read.checkpoints SET sequence = $2, updated_at = now(), failing = false, "
            "last_error = NULL, parked_sequence = NULL WHERE projection = $1",
            name,
            rebuilt,
        )
        await connection.execute(f"DROP SCHEMA {retired} CASCADE")
        await connection.execute(f"DROP SCHEMA {fresh} CASCADE")
    return int(rebuilt)
