"""Projection figures: rebuild throughput next to a bare scan of the same log, lag from
commit to read model at a steady command rate, and the processes' peak memory.

1. A log of `--events` realistic events (benchmarks/bulk_log.py: long trading sessions
   decided by the domain, chained and appended with COPY, numbered by the sequencer), then
   checked: verify_stream on sampled streams, the global chain on sampled ranges.
2. `--rounds` rounds of: a bare keyset scan of the log (every page read exactly as the
   rebuild reads it, nothing done with it), then a rebuild of all nine read models
   (`projections.rebuild`, swaps included) in a process of its own. Medians.
3. The relay and the projection workers start, each a process of its own, on a JetStream
   stream of this run's (the history counts as published, as with a retention limit:
   the workers' checkpoints are at the head after the rebuild). Commands at `--rate` per
   second through the command layer for `--seconds` (benchmarks/steady_load.py); each is
   timed from its commit to its read model (p50, p99).
4. One more rebuild while the relay, the workers and the same load run; meanwhile the
   RSS of the three processes is sampled. Their peak (VmHWM) is the memory figure.

    python -m benchmarks.bench_projections [--events 1000000] [--rounds 2] [--rate 1000]

The last line: projections: lag_p50_ms=.. lag_p99_ms=.. rebuild=.. scan=.. ratio=.. rss_mb=..
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import sys
import time
from typing import Any
from uuid import uuid4

import asyncpg
import nats
import uvloop

from benchmarks.bulk_log import generate
from benchmarks.common import cpu_seconds_of, database_server, median, report, scratch_database
from benchmarks.projection_roles import memory_kb
from benchmarks.steady_load import Watcher, set_up, steady
from commands.bootstrap import bootstrap
from ledger import sequencer
from ledger.store import EventStore, verify_stream
from projections.folding import PAGE_DEFAULT, Folder, read_page
from projections.rebuild import scratch_schema
from projections.registry import select

RSS_SAMPLE_S = 0.5


async def verify_sample(url: str, head: int, streams: int = 200) -> str:
    """verify_stream on random streams, the global chain on three ranges of the log."""
    pool = await asyncpg.create_pool(url, min_size=1, max_size=2)
    try:
        ids = await pool.fetch(
            "SELECT DISTINCT originator_id FROM ledger.events TABLESAMPLE SYSTEM (1) LIMIT $1",
            streams,
        )
        store = EventStore(pool)
        events = 0
        for (stream_id,) in ids:
            verification = await verify_stream(store, stream_id)
            assert verification.ok, verification
            events += verification.checked
        span = min(head, 5_000)
        async with pool.acquire() as connection:
            for first in {1, max(1, head // 2), head - span + 1}:
                last = min(first + span - 1, head)
                checked = await sequencer.verify_range(connection, first, last)
                assert checked.ok, checked
        return f"{len(ids)} streams ({events:,} events) and 3 ranges of {span:,} sequences verified"
    finally:
        await pool.close()


async def scan(url: str, head: int) -> float:
    """Events/s reading every page as the rebuild reads it, and doing nothing with it."""
    connection = await asyncpg.connect(url)
    try:
        topics = Folder(select(["all"]), [connection] * 9, scratch_schema, 0).topics
        started, after = time.perf_counter(), 0
        while after < head:
            end = min(after + PAGE_DEFAULT, head)
            await read_page(connection, after, end, topics)
            after = end
        return head / (time.perf_counter() - started)
    finally:
        await connection.close()


async def spawn(*arguments: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "benchmarks.projection_roles", *arguments,
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip


async def finished(process: asyncio.subprocess.Process, timeout_s: float = 60) -> dict[str, Any]:
    """The JSON line a role process prints last."""
    assert process.stdout is not None
    output = await asyncio.wait_for(process.stdout.read(), timeout=timeout_s)
    await process.wait()
    assert process.returncode == 0, (process.returncode, output[-2000:])
    result: dict[str, Any] = json.loads(output.decode().strip().splitlines()[-1])
    return result


async def rebuild_process(url: str, page: int) -> dict[str, Any]:
    process = await spawn("rebuild", url, str(page))
    return await finished(process, timeout_s=3_600)


async def throughput(url: str, head: int, rounds: int, page: int) -> dict[str, list[float]]:
    figures: dict[str, list[float]] = {"scan": [], "rebuild": [], "rebuild_rss_mb": []}
    for _ in range(rounds):
        figures["scan"].append(await scan(url, head))
        result = await rebuild_process(url, page)
        assert result["sequence"] == head, result
        figures["rebuild"].append(result["events"] / result["seconds"])
        figures["rebuild_rss_mb"].append(result["vmhwm_kb"] / 1024)
    return figures


class Live:
    """The relay and the workers, in processes of their own, on a stream of this run's."""

    def __init__(self, url: str, nats_url: str) -> None:
        self.url, self.nats_url = url, nats_url
        self.stream = f"BENCH_PROJ_{uuid4().hex[:8].upper()}"
        self.processes: dict[str, asyncio.subprocess.Process] = {}

    async def start(self) -> None:
        connection = await asyncpg.connect(self.url)
        try:
            await connection.execute("UPDATE ledger.relay_state SET published = sequenced")
        finally:
            await connection.close()
        self.processes["relay"] = await spawn("relay", self.url, self.nats_url, self.stream)
        await asyncio.sleep(1.0)  # The relay makes the stream before the workers bind to it.
        self.processes["worker"] = await spawn("worker", self.url, self.nats_url, self.stream)

    async def stop(self) -> dict[str, float]:
        """Stop both; return each one's peak RSS in MB."""
        peaks = {}
        for role, process in self.processes.items():
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            peaks[role] = (await finished(process))["vmhwm_kb"] / 1024
        client = await nats.connect(self.nats_url)
        with contextlib.suppress(Exception):
            await client.jetstream().delete_stream(self.stream)
        await client.close()
        return peaks


async def caught_up(pool: asyncpg.Pool, timeout_s: float = 120) -> None:
    """Until every projection's checkpoint is at the head of the numbered log."""
    async with asyncio.timeout(timeout_s):
        while True:
            head = await pool.fetchval("SELECT coalesce(max(sequence), 0) FROM ledger.sequence")
            behind = await pool.fetchval(
                "SELECT count(*) FROM read.checkpoints WHERE sequence < $1", head
            )
            if behind == 0:
                return
            await asyncio.sleep(0.1)


def cpu_seconds(processes: dict[str, asyncio.subprocess.Process]) -> dict[str, float]:
    """CPU seconds so far of the relay, the workers and this process (the commands)."""
    used = {role: cpu_seconds_of(process.pid) or 0.0 for role, process in processes.items()}
    used["commands"] = time.process_time()
    return used


def sampled_rss(pids: dict[str, int], samples: dict[str, list[float]]) -> None:
    for role, pid in pids.items():
        rss = memory_kb(pid, "VmRSS")
        if rss:
            samples.setdefault(role, []).append(rss / 1024)


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def live_phase(url: str, nats_url: str, arguments: argparse.Namespace) -> dict[str, Any]:
    live = Live(url, nats_url)
    pool = await asyncpg.create_pool(url, min_size=4, max_size=40)
    stop_watching = asyncio.Event()
    watching: asyncio.Task[None] | None = None
    figures: dict[str, Any] = {}
    try:
        await live.start()
        ledger = bootstrap(pool)
        market = await set_up(ledger, arguments.accounts, instruments=8)
        await caught_up(pool)
        watcher = Watcher(pool)
        watching = asyncio.create_task(watcher.run(stop_watching))
        await steady(ledger, market, watcher, arguments.rate, arguments.warmup, seed=1)
        watcher.recording = True
        before = cpu_seconds(live.processes)
        head = await pool.fetchval("SELECT coalesce(max(sequence), 0) FROM ledger.sequence")
        load = await steady(ledger, market, watcher, arguments.rate, arguments.seconds, seed=2)
        await caught_up(pool)
        spent = {role: cpu - before[role] for role, cpu in cpu_seconds(live.processes).items()}
        events = await pool.fetchval("SELECT max(sequence) FROM ledger.sequence") - head
        watcher.recording = False
        figures.update(
            lags=watcher.lags_ms, stages=watcher.stages_ms, load=load, cpu=spent, events=events
        )
        # The same load again, with a rebuild of everything beside it.
        samples: dict[str, list[float]] = {}
        rebuilding = await spawn("rebuild", url, str(arguments.page))
        pids = {role: process.pid for role, process in live.processes.items()}
        pids["rebuild"] = rebuilding.pid
        loading = asyncio.create_task(
            steady(ledger, market, watcher, arguments.rate, 3_600, seed=3)
        )
        result_task = asyncio.create_task(finished(rebuilding, timeout_s=3_600))
        while not result_task.done():
            sampled_rss(pids, samples)
            await asyncio.sleep(RSS_SAMPLE_S)
        loading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loading
        figures["under_load"] = result_task.result()
        figures["rss_samples"] = samples
        await caught_up(pool)
    finally:
        stop_watching.set()
        if watching is not None:
            await watching
        figures["peaks"] = await live.stop()
        await pool.close()
    return figures


def print_live(figures: dict[str, Any], arguments: argparse.Namespace) -> None:
    load, lags = figures["load"], figures["lags"]
    print(
        f"  steady load: {load.started:,} commands in {load.seconds:.1f}s "
        f"({load.started / load.seconds:,.0f}/s asked {arguments.rate:,.0f}/s), "
        f"{load.failed} refused, latest start {load.late_max_ms:.0f} ms behind schedule",
        flush=True,
    )
    for error in load.errors:
        print(f"    refused: {error}")
    if lags:
        print(
            f"  commit -> read model: p50 {statistics.median(lags):.1f} ms, "
            f"p90 {percentile(lags, 0.9):.1f} ms, p99 {percentile(lags, 0.99):.1f} ms, "
            f"max {max(lags):.1f} ms over {len(lags):,} commands"
        )
    for stage, values in figures["stages"].items():
        if values:
            print(
                f"    commit -> {stage}: p50 {statistics.median(values):.1f} ms, "
                f"p99 {percentile(values, 0.99):.1f} ms"
            )
    commands, events = load.started, figures["events"]
    if commands and events:
        spent = ", ".join(
            f"{role} {seconds * 1e3 / events:.2f}" for role, seconds in figures["cpu"].items()
        )
        print(f"  CPU ms per event ({events / commands:.1f} events per command): {spent}")
    under = figures["under_load"]
    print(
        f"  rebuild beside the relay, the workers and the load: "
        f"{under['events'] / under['seconds']:,.0f} events/s ({under['events']:,} events)"
    )
    for role, values in figures["rss_samples"].items():
        print(f"  rss of {role:8} during it: {min(values):.0f}-{max(values):.0f} MB")
    for role, peak in figures["peaks"].items():
        print(f"  peak rss (VmHWM) of {role}: {peak:.0f} MB")


async def main(arguments: argparse.Namespace) -> None:
    nats_url = os.environ.get("LEDGER_BENCH_NATS_URL") or os.environ.get(
        "LEDGER_TEST_NATS_URL", "nats://127.0.0.1:4222"
    )
    with database_server() as server:
        async with scratch_database(server) as url:
            started = time.perf_counter()
            head = await generate(url, arguments.events, processes=arguments.processes)
            connection = await asyncpg.connect(url)
            await connection.execute("VACUUM ANALYZE ledger.events")
            await connection.execute("VACUUM ANALYZE ledger.sequence")
            await connection.close()
            print(f"  log: {head:,} events in {time.perf_counter() - started:.0f}s", flush=True)
            print(f"  {await verify_sample(url, head)}", flush=True)
            figures = await throughput(url, head, arguments.rounds, arguments.page)
            report("rebuild of all read models", figures["rebuild"])
            report("bare keyset scan (baseline)", figures["scan"])
            report("rebuild peak rss", figures["rebuild_rss_mb"], unit="MB")
            live = await live_phase(url, nats_url, arguments)
            print_live(live, arguments)
    lags = live["lags"]
    rebuild, scanned = median(figures["rebuild"]), median(figures["scan"])
    rss_mb = max([*figures["rebuild_rss_mb"], *live["peaks"].values(),
                  live["under_load"]["vmhwm_kb"] / 1024])  # fmt: skip
    print(
        f"projections: lag_p50_ms={statistics.median(lags) if lags else float('nan'):.1f} "
        f"lag_p99_ms={percentile(lags, 0.99):.1f} rebuild={rebuild:.0f} scan={scanned:.0f} "
        f"ratio={rebuild / scanned:.3f} rss_mb={rss_mb:.0f}",
        flush=True,
    )


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--page", type=int, default=PAGE_DEFAULT)
    parser.add_argument("--processes", type=int, default=2, help="to generate the log")
    parser.add_argument("--rate", type=float, default=1_000.0, help="commands per second")
    parser.add_argument("--seconds", type=float, default=20.0, help="of measured load")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--accounts", type=int, default=200)
    return parser.parse_args()


if __name__ == "__main__":
    uvloop.run(main(parse_arguments()))
