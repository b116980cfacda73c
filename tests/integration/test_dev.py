"""`ledger dev` as a user runs it: a subprocess with embedded servers, stopped by a signal.

Every process it started must be gone when it exits, whether it is stopped while
serving or in the middle of its startup; a second start on the same folder reuses
the data.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import psutil
import pytest

from ledger.embedded import free_port
from tests.integration.test_embedded import processes_using, socket_listening, wait_gone

REPO_ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 120.0
EXIT_TIMEOUT_S = 90.0
BANNER = "ledger dev is running"


class DevProcess:
    """One `ledger dev --data DIR --port PORT` run, its output in DIR/../dev-N.out."""

    def __init__(self, data_dir: Path, run: int, port: int | None = None) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.output_path = data_dir.parent / f"dev-{run}.out"
        # Only what the test sets: no LEDGER_* of the machine, so the servers are embedded.
        env = {name: value for name, value in os.environ.items() if not name.startswith("LEDGER_")}
        with self.output_path.open("wb") as output:
            self.process = subprocess.Popen(
                [*ledger_command(), "dev", "--data", str(data_dir), "--port", str(self.port)],
                stdout=output,
                stderr=subprocess.STDOUT,
                cwd=REPO_ROOT,
                env=env,
            )

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def output(self) -> str:
        return self.output_path.read_text(errors="replace")

    def wait_healthy(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"ledger dev exited early:\n{self.output}"
            # The banner comes a moment after the port opens; the test reads URLs from it.
            if BANNER in self.output:
                try:
                    if httpx.get(f"{self.api}/health", timeout=2).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
            time.sleep(0.1)
        raise AssertionError(f"/health not 200 after {START_TIMEOUT_S} s:\n{self.output}")

    def descendants(self) -> list[int]:
        return [child.pid for child in psutil.Process(self.process.pid).children(recursive=True)]

    def kill_if_running(self) -> None:
        """Teardown of a failed test: never leave a `ledger dev` behind."""
        if self.process.poll() is None:
            self.stop(signal.SIGTERM)

    def stop(self, signum: signal.Signals) -> int:
        self.process.send_signal(signum)
        try:
            return self.process.wait(EXIT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise

    def postgres_url(self) -> str:
        match = re.search(r"PostgreSQL\s+(postgresql://\S+)", self.output)
        assert match is not None, f"no PostgreSQL URL printed:\n{self.output}"
        return match.group(1)


@pytest.fixture
def runs() -> Iterator[list[DevProcess]]:
    """The `ledger dev` processes a test starts, stopped at its end whatever happened."""
    started: list[DevProcess] = []
    yield started
    for run in started:
        run.kill_if_running()


def ledger_command() -> list[str]:
    """The `ledger` console script of this venv; the module itself if not installed."""
    script = Path(sys.executable).parent / "ledger"
    return [str(script)] if script.exists() else [sys.executable, "-m", "ledger.cli"]


def assert_nothing_left(run: DevProcess, started: list[int]) -> None:
    assert wait_gone(started) == [], f"survivors of ledger dev:\n{run.output}"
    assert processes_using(run.data_dir) == []


async def test_dev_serves_then_stops_on_sigterm_and_sigint_and_reuses_its_data(
    tmp_path: Path, runs: list[DevProcess]
) -> None:
    data_dir = tmp_path / "data"

    first = DevProcess(data_dir, run=1)
    runs.append(first)
    first.wait_healthy()
    async with httpx.AsyncClient(base_url=first.api, timeout=5) as client:
        ready = await client.get("/ready")
        assert ready.json() == {
            "status": "ok",
            "postgres": "ok",
            "nats": "ok",
            "relay": "ok",
            "projections": "ok",
        }
        assert (await client.get("/schema/openapi.json")).status_code == 200
    connection = await asyncpg.connect(first.postgres_url())
    try:
        await connection.execute("CREATE TABLE kept (note text)")
    finally:
        await connection.close()
    started = first.descendants()
    names = process_names(started)
    assert {"postgres", "nats-server"} <= names
    assert first.stop(signal.SIGTERM) == 0, first.output
    assert_nothing_left(first, started)

    second = DevProcess(data_dir, run=2)
    runs.append(second)
    second.wait_healthy()
    assert "migrations applied: none pending" in second.output
    connection = await asyncpg.connect(second.postgres_url())
    try:
        assert await connection.fetchval("SELECT count(*) FROM kept") == 0
    finally:
        await connection.close()
    started = second.descendants()
    assert second.stop(signal.SIGINT) == 0, second.output
    assert_nothing_left(second, started)
    assert "ledger dev: stopped" in second.output


def test_dev_stopped_during_startup_exits_cleanly(tmp_path: Path, runs: list[DevProcess]) -> None:
    run = DevProcess(tmp_path / "data", run=1)
    runs.append(run)
    # Signal as soon as the first server process exists: startup is then half done.
    deadline = time.monotonic() + START_TIMEOUT_S
    started: list[int] = []
    while not started and time.monotonic() < deadline:
        assert run.process.poll() is None, run.output
        started = run.descendants()
        time.sleep(0.01)
    assert started, f"ledger dev started no server:\n{run.output}"
    assert run.stop(signal.SIGTERM) == 0, run.output
    assert_nothing_left(run, started)


def test_dev_that_fails_halfway_stops_what_it_started(
    tmp_path: Path, runs: list[DevProcess]
) -> None:
    with socket_listening() as port:
        # The API cannot bind, after PostgreSQL and NATS are up and the database migrated.
        run = DevProcess(tmp_path / "data", run=1, port=port)
        runs.append(run)
        started: list[int] = []
        deadline = time.monotonic() + START_TIMEOUT_S
        while run.process.poll() is None and time.monotonic() < deadline:
            started = sorted({*started, *run.descendants()})
            time.sleep(0.01)
    assert run.process.poll() not in (None, 0), run.output
    assert "address already in use" in run.output
    assert started, "ledger dev failed before starting any server"
    assert_nothing_left(run, started)


def test_dev_stops_when_its_postgres_dies(tmp_path: Path, runs: list[DevProcess]) -> None:
    run = DevProcess(tmp_path / "data", run=1)
    runs.append(run)
    run.wait_healthy()
    started = run.descendants()
    children = psutil.Process(run.process.pid).children()
    postmaster = next(child for child in children if child.name() == "postgres")
    postmaster.kill()
    assert run.process.wait(EXIT_TIMEOUT_S) == 1, run.output
    assert "postgres exited" in run.output
    assert_nothing_left(run, started)


def process_names(pids: list[int]) -> set[str]:
    """Names of the processes still alive: short-lived PostgreSQL backends may be gone."""
    names: set[str] = set()
    for pid in pids:
        try:
            names.add(psutil.Process(pid).name())
        except psutil.NoSuchProcess:
            continue
    return names
