"""What every benchmark shares: a scratch database, timing, medians, and the printed lines.

The database server is LEDGER_BENCH_DATABASE_URL, else LEDGER_TEST_DATABASE_URL, else an
embedded PostgreSQL started for the run. Each run creates its own database, migrates it
and drops it at the end, so a benchmark never touches real data.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from ledger.migrate import migrate


@contextlib.contextmanager
def database_server() -> Iterator[str]:
    """A PostgreSQL server URL: from the environment, else an embedded one for this run."""
    url = os.environ.get("LEDGER_BENCH_DATABASE_URL") or os.environ.get("LEDGER_TEST_DATABASE_URL")
    if url:
        yield url
        return
    from ledger.embedded import EmbeddedPostgres

    with (
        tempfile.TemporaryDirectory(prefix="ledger-bench-") as folder,
        EmbeddedPostgres(Path(folder) / "postgres") as server,
    ):
        yield server.url


def with_database(url: str, database: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{database}"))


def database_of(url: str) -> str:
    """The database a PostgreSQL URL names (a Unix socket's folder is in its query)."""
    return urlsplit(url).path.lstrip("/")


@contextlib.asynccontextmanager
async def scratch_database(server_url: str) -> AsyncIterator[str]:
    """A fresh, migrated database of this run's own, dropped afterwards."""
    name = f"ledger_bench_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(server_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    url = with_database(server_url, name)
    try:
        await migrate(url)
        yield url
    finally:
        admin = await asyncpg.connect(server_url)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


async def rate(count: int, run: Callable[[], Awaitable[None]]) -> float:
    """Items per second for one timed run that handles `count` items."""
    started = time.perf_counter()
    await run()
    return count / (time.perf_counter() - started)


class CpuMeter:
    """CPU seconds used by this process plus the database's client backends (Linux /proc;
    the server must run on this machine). Wall-clock rates on a shared machine swing with
    its other load; CPU per event is what a saturated machine's rate is made of, and it
    holds still. Returns None where /proc of the backends is not readable."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def sample(self) -> dict[int, float]:
        pids = await self.pool.fetch(
            "SELECT pid FROM pg_stat_activity "
            "WHERE datname = current_database() AND backend_type = 'client backend'"
        )
        used = {0: time.process_time()}
        for (pid,) in pids:
            seconds = cpu_seconds_of(pid)
            if seconds is not None:
                used[pid] = seconds
        return used

    @staticmethod
    def between(before: dict[int, float], after: dict[int, float]) -> float | None:
        if len(after) == 1:
            return None
        return sum(seconds - before.get(pid, 0.0) for pid, seconds in after.items())


TICK_S: Final = 1.0 / os.sysconf("SC_CLK_TCK")


def cpu_seconds_of(pid: int) -> float | None:
    """User plus system CPU seconds of a process so far (Linux /proc); None if it is gone
    or unreadable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) * TICK_S


def median(values: list[float]) -> float:
    return statistics.median(values)


def report(label: str, values: list[float], unit: str = "events/s") -> None:
    shown = ", ".join(f"{value:,.0f}" for value in values)
    print(f"  {label:<34} median {median(values):>10,.0f} {unit}   runs: {shown}", flush=True)


async def concurrently(workers: int, work: Callable[[int], Awaitable[None]]) -> None:
    await asyncio.gather(*(work(index) for index in range(workers)))
