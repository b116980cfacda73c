"""Rebuild read models from ledger.events, into fresh tables swapped in atomically.

Source: the log in global order, ledger.sequence JOIN ledger.events (projections/source.py),
read in bounded keyset batches, never NATS. Each projection gets a scratch schema
`read_rebuild_<name>` holding empty copies of its tables (CREATE TABLE ... LIKE
read.<table> INCLUDING ALL: same columns, defaults, constraints and index names) and its
own checkpoints table; the same engine (apply_batch) fills them, with the scratch schema
as search_path. The log is read once per batch and applied to every projection rebuilt,
each on its own connection, concurrently. Progress (events/s, ETA) goes to stderr.

The swap, per projection, is one transaction: lock the live checkpoint row (the live
worker of that projection waits), catch the scratch tables up to the log's head, move the
live tables to `read_retired_<name>`, move the fresh ones into `read`, copy the live
tables' grants, set the live checkpoint to the rebuilt one and drop the old tables. Until
it commits, the API reads the old tables; a swap that cannot get its locks within
LOCK_TIMEOUT_S is rolled back and retried. The scratch checkpoint is at least the live
one (both only apply sequenced events and the scratch is caught up to the head), so the
worker resumes past it and skips what it redelivers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Final, TextIO

import asyncpg
import msgspec

from projections import source
from projections.base import STATEMENT_TIMEOUT_S, Projection
from projections.engine import LIVE_SCHEMA, apply_batch, read_checkpoint
from projections.progress import Progress
from projections.registry import select

BATCH_DEFAULT: Final = 2_000
LOCK_TIMEOUT_S: Final = 5.0
SWAP_ATTEMPTS_MAX: Final = 5
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
    """`ledger project --rebuild NAME|all`: rebuild the projections named, then swap them in."""
    assert 1 <= batch <= source.READ_BATCH_MAX, batch
    projections = select(names)
    reader = await asyncpg.connect(database_url)
    writers = [await asyncpg.connect(database_url) for _ in projections]
    try:
        for writer, projection in zip(writers, projections, strict=True):
            await _lock(writer, projection.name)
            await _prepare(writer, projection)
        loop = asyncio.get_running_loop()
        started = loop.time()
        events = await _replay(reader, writers, projections, batch, out)
        results = []
        for writer, projection in zip(writers, projections, strict=True):
            sequence = await _swap_retrying(writer, projection, batch)
            results.append(Rebuilt(projection.name, sequence, events, loop.time() - started))
        return results
    finally:
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


async def _prepare(connection: asyncpg.Connection, projection: Projection) -> None:
    """Empty copies of the projection's tables (and a checkpoints table) in its scratch schema."""
    scratch, retired = scratch_schema(projection.name), retired_schema(projection.name)
    statements = [
        # Left over by a rebuild that died before its swap: nothing in them is needed.
        f"DROP SCHEMA IF EXISTS {scratch} CASCADE",
        f"DROP SCHEMA IF EXISTS {retired} CASCADE",
        f"CREATE SCHEMA {scratch}",
        *(
            f"CREATE TABLE {scratch}.{table} (LIKE {LIVE_SCHEMA}.{table} INCLUDING ALL)"
            for table in (*projection.tables, "checkpoints")
        ),
    ]
    async with connection.transaction():
        for statement in statements:
            await connection.execute(statement, timeout=STATEMENT_TIMEOUT_S)


async def _replay(
    reader: asyncpg.Connection,
    writers: list[asyncpg.Connection],
    projections: list[Projection],
    batch: int,
    out: TextIO | None,
) -> int:
    """Apply the log up to its head now into every scratch schema; return events read."""
    target = await source.head(reader)
    label = "rebuild " + ",".join(projection.name for projection in projections)
    progress = Progress(label, target, out)
    after = 0
    while after < target:
        events = await source.read_after(reader, after, up_to=target, limit=batch)
        if not events:
            break
        await asyncio.gather(
            *(
                apply_batch(writer, projection, events, schema=scratch_schema(projection.name))
                for writer, projection in zip(writers, projections, strict=True)
            )
        )
        after = events[-1].sequence
        progress.advance(len(events))
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
    """Catch the scratch tables up to the head and swap them in; return the new checkpoint."""
    name = projection.name
    scratch, retired = scratch_schema(name), retired_schema(name)
    async with connection.transaction():
        await connection.execute(f"SET LOCAL lock_timeout = '{int(LOCK_TIMEOUT_S * 1000)}ms'")
        await connection.execute(
            "INSERT INTO read.checkpoints (projection) VALUES ($1) ON CONFLICT DO NOTHING", name
        )
        live = await connection.fetchval(
            "SELECT sequence FROM read.checkpoints WHERE projection = $1 FOR UPDATE", name
        )
        rebuilt = await read_checkpoint(connection, name, schema=scratch)
        while events := await source.read_after(connection, rebuilt, limit=batch):
            rebuilt = (await apply_batch(connection, projection, events, schema=scratch)).after
        assert rebuilt >= live, (name, rebuilt, live)
        await connection.execute(f"CREATE SCHEMA {retired}")
        for table in projection.tables:
            grants = await connection.fetch(_GRANTS_SQL, f"{LIVE_SCHEMA}.{table}")
            await connection.execute(f"ALTER TABLE {LIVE_SCHEMA}.{table} SET SCHEMA {retired}")
            await connection.execute(f"ALTER TABLE {scratch}.{table} SET SCHEMA {LIVE_SCHEMA}")
            for grantee, privilege in grants:
                await connection.execute(f"GRANT {privilege} ON {LIVE_SCHEMA}.{table} TO {grantee}")
        await connection.execute(
            "UPDATE read.checkpoints SET sequence = $2, updated_at = now(), failing = false, "
            "last_error = NULL, parked_sequence = NULL WHERE projection = $1",
            name,
            rebuilt,
        )
        await connection.execute(f"DROP SCHEMA {retired} CASCADE")
        await connection.execute(f"DROP SCHEMA {scratch} CASCADE")
    return int(rebuilt)
