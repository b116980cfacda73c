"""The API under load: authenticated POST /api/v1/orders at 64 clients next to the bare
store append rate, and GET /api/v1/positions, all in the same run.

Production shape, on one machine: `ledger serve --workers 2` (uvicorn, uvloop, httptools),
`ledger relay` and `ledger project` as processes of their own, on a scratch database of
the run's own (migrated) and an embedded NATS; rate limits off, cheap argon2 for the
setup. The market is set up through the API itself (benchmarks/api_setup.py). Then,
round by round, each phase starting once the relay and every projection have caught up
with the log:

- orders: `clients` keep-alive connections, each a trader placing, again and again, a buy
  limit on their own account (accepted, never filled), so it is the command path that is
  measured, not conflicts. Latency is per request, from its first byte sent to its last
  byte read (benchmarks/http_load.py: requests encoded once, about 0.2 ms of client CPU
  each on the project's machine, shown as `this process`). Twice per round:
  - alone: the relay and the projection workers paused (SIGSTOP) for the phase, as the
    baseline has nothing following its log either; they catch up before the next phase.
    The API and PostgreSQL have the machine: this is the figure of the last line.
  - following: the relay and the workers follow the log meanwhile, as they would in
    production, on the same two cores (printed above the last line).
- positions: the same clients each read their trader's positions page (four rows).
- append (the baseline): EventStore.append of one event per append from `clients`
  concurrent writers (group commit on, as bench_append's "store 1"), in a second scratch
  database on the same PostgreSQL, from this process.

Printed: medians over the rounds, CPU per request by process group, and last:

    api: orders=<commands/s> append=<events/s> ratio=<orders/append> p50_ms=.. p99_ms=..
    positions=<requests/s>

    python -m benchmarks.bench_api [--rounds 5] [--seconds 4] [--clients 64] [--workers 2]
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import signal
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Final

import asyncpg
import uvloop

from benchmarks.api_setup import Api, Market, order_body, set_up_market
from benchmarks.bench_append import Writers, store_append
from benchmarks.common import (
    TICK_S,
    cpu_seconds_of,
    database_of,
    database_server,
    median,
    report,
    scratch_database,
)
from benchmarks.http_load import (
    LoadRound,
    Response,
    close_connections,
    drive,
    encode_request,
    open_connections,
    percentile,
)
from benchmarks.processes import Processes, clean_environment, descendants, tail
from ledger.embedded import EmbeddedNats, free_port
from ledger.relay_lag import relay_lag
from ledger.store import EventStore
from projections.lag import lag

HOST: Final = "127.0.0.1"
# The processes that follow the log; paused (SIGSTOP) while the API is measured alone.
PIPELINE: Final = ("relay", "project")
START_TIMEOUT_S: Final = 120.0
SETTLE_TIMEOUT_S: Final = 300.0
POLL_S: Final = 0.1

# Per group: CPU seconds by pid, or a single figure (this process, the whole machine).
Sample = dict[str, dict[int, float] | float]


def server_environment(url: str, nats_url: str, port: int) -> dict[str, str]:
    return clean_environment(
        {
            "LEDGER_DATABASE_URL": url,
            "LEDGER_NATS_URL": nats_url,
            "LEDGER_JWT_SECRET": secrets.token_urlsafe(48),
            "LEDGER_HTTP_HOST": HOST,
            "LEDGER_HTTP_PORT": str(port),
            # One user drives each connection as hard as it can: limits would refuse it.
            "LEDGER_RATE_LIMIT_PER_MINUTE": "0",
            "LEDGER_AUTH_RATE_LIMIT_PER_MINUTE": "0",
            # Setup signs in a few dozen users; nothing real is protected here.
            "LEDGER_ARGON2_TIME_COST": "1",
            "LEDGER_ARGON2_MEMORY_KIB": "8",
            "LEDGER_ARGON2_PARALLELISM": "1",
        }
    )


class CpuUse:
    """CPU seconds of the run's process groups, from /proc (Linux; zeros elsewhere):
    the API (supervisor and workers), the relay and projection workers, the PostgreSQL
    backends of the run's databases (and the server's background processes), and this
    process (the load generator, or the baseline's writers)."""

    def __init__(self, processes: Processes, pool: asyncpg.Pool, databases: list[str]) -> None:
        self.processes, self.pool, self.databases = processes, pool, databases

    async def sample(self) -> Sample:
        roots = {item.name: item.process.pid for item in self.processes.started}
        backends = await self.pool.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = ANY($1) OR datname IS NULL",
            self.databases,
        )
        groups = {
            "api": [roots["serve"], *descendants(roots["serve"])],
            "relay+projections": [roots["relay"], roots["project"]],
            "postgres": [row["pid"] for row in backends],
        }
        used: Sample = {name: _seconds(pids) for name, pids in groups.items()}
        used["this process"] = time.process_time()
        used["machine"] = _machine_busy_s()
        used["wall"] = time.perf_counter()
        return used


def _seconds(pids: list[int]) -> dict[int, float]:
    found: dict[int, float] = {}
    for pid in pids:
        seconds = cpu_seconds_of(pid)
        if seconds is not None:
            found[pid] = seconds
    return found


def _machine_busy_s() -> float:
    """CPU seconds the whole machine spent busy so far (every core, every process)."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return 0.0
    values = [int(value) for value in fields]
    idle = values[3] + values[4]  # idle and iowait
    return (sum(values[:8]) - idle) * TICK_S


def cpu_between(before: Sample, after: Sample) -> dict[str, float]:
    """CPU seconds per group between two samples (processes gone meanwhile not counted)."""
    spent: dict[str, float] = {}
    for name, now in after.items():
        then = before.get(name)
        if isinstance(now, dict):
            assert isinstance(then, dict)
            spent[name] = sum(seconds - then.get(pid, 0.0) for pid, seconds in now.items())
        else:
            assert isinstance(now, float)
            assert isinstance(then, float)
            spent[name] = now - then
    return spent


async def settle(pool: asyncpg.Pool) -> float:
    """Wait until the relay has published and every projection applied the whole log;
    the seconds it took."""
    started = time.perf_counter()
    async with asyncio.timeout(SETTLE_TIMEOUT_S):
        while True:
            relay = await relay_lag(pool, timeout_s=10.0)
            projections = await lag(pool)
            if relay.events_behind == 0 and not any(item.events_behind for item in projections):
                return time.perf_counter() - started
            parked = [item.name for item in projections if item.failing]
            if parked:
                raise RuntimeError(f"projections parked: {parked}")
            await asyncio.sleep(POLL_S)


async def wait_healthy(api: Api, processes: Processes) -> None:
    async with asyncio.timeout(START_TIMEOUT_S):
        while True:
            processes.check_running()
            try:
                await api.call("GET", "/health", status=200)
                return
            except OSError:
                await asyncio.sleep(POLL_S)


def order_accepted(response: Response) -> bool:
    return response.status == 202 and b'"status":"accepted"' in response.body


def positions_listed(response: Response) -> bool:
    return response.status == 200 and response.body.startswith(b'{"positions":[{')


async def load_round(
    port: int, requests: list[bytes], seconds: float, accepted: Callable[[Response], bool]
) -> LoadRound:
    """One round on fresh connections (uvicorn closes keep-alive ones idle for 5 s)."""
    connections = await open_connections(HOST, port, len(requests))
    try:
        done = await drive(connections, requests, seconds, accepted)
    finally:
        await close_connections(connections)
    if done.failures:
        first = done.failures[0]
        raise RuntimeError(
            f"{len(done.failures)} requests refused, the first: {first.status} {first.body[:300]!r}"
        )
    return done


async def phase(figures: Figures, name: str, cpu: CpuUse, run: Awaitable[LoadRound]) -> None:
    """One load phase: its rate, latency percentiles and CPU per request, as `name`."""
    before = await cpu.sample()
    done = await run
    figures.add_cpu(name, cpu_between(before, await cpu.sample()), done.completed)
    figures.add(name, done.rate)
    figures.add(f"{name} p50", percentile(done.latencies_ms, 0.50))
    figures.add(f"{name} p99", percentile(done.latencies_ms, 0.99))


class Figures:
    def __init__(self) -> None:
        self.values: dict[str, list[float]] = {}

    def add(self, name: str, value: float) -> None:
        self.values.setdefault(name, []).append(value)

    def median(self, name: str) -> float:
        return median(self.values[name])

    def add_cpu(self, phase: str, spent: dict[str, float], requests: int) -> None:
        for group, seconds in spent.items():
            self.add(f"cpu {phase} {group}", 1e3 * seconds / max(requests, 1))
        self.add(f"busy {phase}", spent["machine"] / spent["wall"])


async def main(arguments: argparse.Namespace) -> None:
    task = asyncio.current_task()
    assert task is not None
    # SIGTERM stops the run like Ctrl-C: through every `finally`, processes stopped by pid.
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    with (
        tempfile.TemporaryDirectory(prefix="ledger-bench-api-") as folder,
        database_server() as server_url,
        EmbeddedNats(Path(folder) / "nats") as broker,
    ):
        async with scratch_database(server_url) as url, scratch_database(server_url) as bare_url:
            await measure(url, bare_url, broker.url, Path(folder), arguments)


async def measure(
    url: str, bare_url: str, nats_url: str, folder: Path, arguments: argparse.Namespace
) -> None:
    port = free_port()
    processes = Processes(folder, server_environment(url, nats_url, port))
    pool = await asyncpg.create_pool(url, min_size=1, max_size=2)
    bare_pool = await asyncpg.create_pool(
        bare_url, min_size=arguments.clients, max_size=arguments.clients
    )
    api = Api(HOST, port)
    try:
        processes.start("serve", "serve", "--workers", str(arguments.workers))
        processes.start("relay", "relay")
        processes.start("project", "project")
        await wait_healthy(api, processes)
        started = time.perf_counter()
        market = await set_up_market(api, processes, arguments.clients)
        await api.close()
        print(
            f"api benchmark: ledger serve --workers {arguments.workers}, relay and projection "
            f"workers as processes; {arguments.clients} clients, {arguments.rounds} rounds of "
            f"{arguments.seconds:g}s; setup through the API took "
            f"{time.perf_counter() - started:.1f}s",
            flush=True,
        )
        databases = [database_of(url), database_of(bare_url)]
        figures = await rounds(market, port, processes, pool, bare_pool, databases, arguments)
    except Exception:
        for item in processes.started:
            print(f"--- {item.name} log (last lines) ---\n{tail(item.log_path)}", flush=True)
        raise
    finally:
        await api.close()
        await pool.close()
        await bare_pool.close()
        leftovers = processes.stop_all()
        if leftovers:
            print(f"  killed processes that outlived their parent: {leftovers}", flush=True)
    print_figures(figures, arguments)


async def rounds(
    market: Market,
    port: int,
    processes: Processes,
    pool: asyncpg.Pool,
    bare_pool: asyncpg.Pool,
    databases: list[str],
    arguments: argparse.Namespace,
) -> Figures:
    traders, instruments = market.traders, market.instrument_ids
    orders = [
        encode_request(
            "POST",
            "/api/v1/orders",
            host=HOST,
            token=trader.token,
            body=order_body(trader, instruments[index % len(instruments)]),
        )
        for index, trader in enumerate(traders)
    ]
    positions = [
        encode_request("GET", "/api/v1/positions", host=HOST, token=trader.token)
        for trader in traders
    ]
    store = EventStore(bare_pool)
    cpu = CpuUse(processes, pool, databases)
    figures = Figures()
    # A warm-up of each path (imports, prepared statements, caches); not counted.
    await settle(pool)
    await load_round(port, orders, arguments.warmup, order_accepted)
    await settle(pool)
    await load_round(port, positions, arguments.warmup, positions_listed)
    await Writers(arguments.clients, 1, arguments.warmup).run(store_append(store, 1))
    for _ in range(arguments.rounds):
        figures.add("settle", await settle(pool))
        await phase(
            figures, "orders", cpu, load_round(port, orders, arguments.seconds, order_accepted)
        )
        figures.add("settle", await settle(pool))
        processes.pause(*PIPELINE)
        try:
            alone = load_round(port, orders, arguments.seconds, order_accepted)
            await phase(figures, "alone", cpu, alone)
        finally:
            processes.resume(*PIPELINE)
        figures.add("settle", await settle(pool))
        read = load_round(port, positions, arguments.seconds, positions_listed)
        await phase(figures, "positions", cpu, read)
        writers = Writers(arguments.clients, 1, arguments.seconds)
        before = await cpu.sample()
        figures.add("append", await writers.run(store_append(store, 1)))
        figures.add_cpu("append", cpu_between(before, await cpu.sample()), writers.events)
        processes.check_running()
    return figures


def print_figures(figures: Figures, arguments: argparse.Namespace) -> None:
    values = figures.values
    phases = (
        ("alone", "POST /orders (accepted), relay and projections paused", "orders/s"),
        ("orders", "POST /orders (accepted), relay and projections following", "orders/s"),
        ("positions", "GET /positions (4 rows)", "requests/s"),
    )
    for name, label, unit in phases:
        report(label, values[name], unit=unit)
        report("  latency p50", values[f"{name} p50"], unit="ms")
        report("  latency p99", values[f"{name} p99"], unit="ms")
    report("store append, 1 event per append", values["append"], unit="events/s")
    print(
        f"  baseline: EventStore.append (group commit), {arguments.clients} writers, "
        "a database of its own on the same PostgreSQL"
    )
    waits = values["settle"]
    print(
        f"  waits for the relay and projections to catch up before a phase: "
        f"{min(waits):.2f}-{max(waits):.2f} s"
    )
    groups = ("api", "postgres", "relay+projections", "this process")
    for name, unit in (("alone", "order"), ("orders", "order"), ("positions", "read")):
        _print_cpu(figures, name, unit, groups)
    _print_cpu(figures, "append", "event", groups)
    orders, append = figures.median("alone"), figures.median("append")
    following = figures.median("orders")
    print(
        f"  with the relay and projections following: orders={following:.0f} "
        f"ratio={following / append:.2f} p50_ms={figures.median('orders p50'):.1f} "
        f"p99_ms={figures.median('orders p99'):.1f}"
    )
    print(
        f"api: orders={orders:.0f} append={append:.0f} ratio={orders / append:.2f} "
        f"p50_ms={figures.median('alone p50'):.1f} p99_ms={figures.median('alone p99'):.1f} "
        f"positions={figures.median('positions'):.0f}",
        flush=True,
    )


def _print_cpu(figures: Figures, phase: str, unit: str, groups: tuple[str, ...]) -> None:
    shown = ", ".join(f"{group} {figures.median(f'cpu {phase} {group}'):.2f}" for group in groups)
    cores = figures.median(f"busy {phase}")
    print(f"  CPU ms per {unit} ({phase}): {shown}; machine busy {cores:.2f} cores")


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    return parser.parse_args()


if __name__ == "__main__":
    try:
        uvloop.run(main(parse_arguments()))
    except (KeyboardInterrupt, asyncio.CancelledError):
        # Ctrl-C or SIGTERM. Every `finally` has run: processes stopped, databases dropped.
        print("bench-api: interrupted", flush=True)
        raise SystemExit(130) from None
