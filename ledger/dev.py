"""`ledger dev` and `ledger serve`: run the API, with embedded servers for dev.

`ledger dev` starts PostgreSQL and NATS under the data folder (unless
LEDGER_DATABASE_URL / LEDGER_NATS_URL name others), creates the `ledger` database,
migrates it and serves the API in this process. Stopping runs in the reverse order:
the API, then NATS, then PostgreSQL, on Ctrl-C, on SIGTERM, and when startup fails
halfway.

One object, `_Shutdown`, owns SIGINT and SIGTERM for the whole life of the process.
While the servers start (plain blocking code) the first signal raises
`ShutdownRequested`, which unwinds whatever has started. While the event loop runs it
asks uvicorn to exit, or cancels the startup task. While we tear down, signals are
noted and ignored, so a second Ctrl-C cannot cut a server's stop in half.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
from collections.abc import Coroutine, Iterator, Mapping, Sequence
from types import FrameType
from typing import Any, Final, Literal
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import msgspec
import uvicorn
import uvloop
from opentelemetry.sdk.trace import TracerProvider

from api.app import create_app
from api.live import end_live_streams
from ledger import heap
from ledger.embedded import EmbeddedNats, EmbeddedPostgres, EmbeddedServer
from ledger.migrate import migrate
from ledger.settings import Settings
from ledger.tracing import COMPONENTS, traced

LEDGER_DATABASE: Final = "ledger"
CONNECT_TIMEOUT_S: Final = 10.0
API_START_TIMEOUT_S: Final = 60.0
API_STOP_TIMEOUT_S: Final = 10
POLL_INTERVAL_S: Final = 0.05
WATCH_INTERVAL_S: Final = 1.0


class ShutdownRequested(BaseException):
    """Raised in the main thread when SIGINT or SIGTERM arrives while servers start.

    A BaseException, like KeyboardInterrupt, so that no `except Exception` swallows it.
    """


WORKERS_STOP_TIMEOUT_S: Final = 10.0


class _Server(uvicorn.Server):
    """uvicorn's server without its own signal handling: `_Shutdown` owns the signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # Live event streams never end by themselves, and uvicorn waits for open responses
        # before it shuts the app's lifespan down: end them first, so connections drain.
        end_live_streams(self.config.app)
        await super().shutdown(sockets)


class _Shutdown:
    """Turns SIGINT and SIGTERM into an orderly stop, whatever phase we are in."""

    def __init__(self) -> None:
        self.requested = False
        self.failure: str | None = None
        self.phase: Literal["starting", "running", "stopping"] = "starting"
        self.loop: asyncio.AbstractEventLoop | None = None
        self.task: asyncio.Task[None] | None = None
        self.server: uvicorn.Server | None = None

    def install(self) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        first = not self.requested
        self.requested = True
        if self.phase == "running" and self.loop is not None:
            # Runs in the main thread between bytecodes: hand over to the loop, never raise.
            self.loop.call_soon_threadsafe(self._stop_async)
        elif self.phase == "starting" and first:
            raise ShutdownRequested(signal.Signals(signum).name)

    def _stop_async(self) -> None:
        if self.server is not None:
            # A second signal while uvicorn drains connections stops waiting for them.
            self.server.force_exit = self.server.should_exit
            self.server.should_exit = True
        elif self.task is not None:
            self.task.cancel()


def run_dev(settings: Settings) -> int:
    """`ledger dev`: embedded servers as needed, migrations, the API. Returns the exit code."""
    shutdown = _Shutdown()
    shutdown.install()
    settings = settings.with_dev_jwt_secret()
    try:
        with contextlib.ExitStack() as stack:
            try:
                # Entered first, so shut down (and flushed) last, once everything stopped.
                providers = {
                    name: stack.enter_context(traced(settings, name)) for name in COMPONENTS
                }
                settings, admin_url, servers = _start_servers(settings, stack)
                _run_loop(_dev(settings, admin_url, servers, shutdown, providers), shutdown)
            finally:
                shutdown.phase = "stopping"
                print("ledger dev: stopping", flush=True)
    except (ShutdownRequested, asyncio.CancelledError):
        if not shutdown.requested:
            raise
    if shutdown.failure is not None:
        print(f"ledger dev: {shutdown.failure}", flush=True)
        return 1
    print("ledger dev: stopped", flush=True)
    return 0


def run_serve(settings: Settings) -> int:
    """`ledger serve`: the API alone, against the servers that `settings` name."""
    shutdown = _Shutdown()
    shutdown.install()
    try:
        with traced(settings, "api") as provider:
            serving = _serve_api(settings, shutdown, banner=None, watched=(), tracer=provider)
            _run_loop(serving, shutdown)
    except (ShutdownRequested, asyncio.CancelledError):
        if not shutdown.requested:
            raise
    return 0


def _start_servers(
    settings: Settings, stack: contextlib.ExitStack
) -> tuple[Settings, str | None, list[EmbeddedServer]]:
    """Start the embedded servers the environment does not replace; `stack` stops them.

    Returns the settings with both URLs; the URL of the maintenance database when
    PostgreSQL is ours (the `ledger` database is then created there if missing); and
    the servers started.
    """
    data_dir = settings.data_dir.expanduser().resolve()
    database_url, nats_url = settings.database_url, settings.nats_url
    admin_url: str | None = None
    servers: list[EmbeddedServer] = []
    if database_url is None:
        postgres = stack.enter_context(EmbeddedPostgres(data_dir / "postgres"))
        servers.append(postgres)
        admin_url = postgres.url
        database_url = with_database(postgres.url, LEDGER_DATABASE)
    if nats_url is None:
        broker = stack.enter_context(EmbeddedNats(data_dir / "nats"))
        servers.append(broker)
        nats_url = broker.url
    resolved = msgspec.structs.replace(
        settings, database_url=database_url, nats_url=nats_url, data_dir=data_dir
    )
    return resolved, admin_url, servers


def _run_loop(main: Coroutine[Any, Any, None], shutdown: _Shutdown) -> None:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        # The loop exists before the coroutine runs, so no signal ever raises inside it.
        shutdown.loop = runner.get_loop()
        shutdown.phase = "running"
        try:
            runner.run(main)
        finally:
            shutdown.phase = "stopping"
            shutdown.loop = None


async def _dev(
    settings: Settings,
    admin_url: str | None,
    servers: Sequence[EmbeddedServer],
    shutdown: _Shutdown,
    providers: Mapping[str, TracerProvider],
) -> None:
    shutdown.task = asyncio.current_task()
    assert settings.database_url is not None
    if shutdown.requested:  # A signal came before this task existed to be cancelled.
        return
    if admin_url is not None:
        await _create_database(admin_url, LEDGER_DATABASE)
    applied = await migrate(settings.database_url)
    print(f"ledger dev: migrations applied: {', '.join(applied) or 'none pending'}", flush=True)
    stop = asyncio.Event()
    workers = _start_workers(settings, stop, providers)
    try:
        await _serve_api(
            settings, shutdown, banner=_banner(settings), watched=servers, tracer=providers["api"]
        )
    finally:
        await _stop_workers(workers, stop)


def _start_workers(
    settings: Settings, stop: asyncio.Event, providers: Mapping[str, TracerProvider]
) -> list[asyncio.Task[Any]]:
    """The relay and the projection workers, beside the API in the same process."""
    from ledger.relay import run_relay
    from projections.worker import run_projections

    assert settings.database_url is not None
    assert settings.nats_url is not None
    database, nats_url = settings.database_url, settings.nats_url
    return [
        asyncio.create_task(
            run_relay(database, nats_url, stop=stop, tracer_provider=providers["relay"]),
            name="relay",
        ),
        asyncio.create_task(
            run_projections(
                database, nats_url, ["all"], stop=stop, tracer_provider=providers["projections"]
            ),
            name="projections",
        ),
    ]


async def _stop_workers(workers: list[asyncio.Task[Any]], stop: asyncio.Event) -> None:
    stop.set()
    _, pending = await asyncio.wait(workers, timeout=WORKERS_STOP_TIMEOUT_S)
    for task in pending:
        task.cancel()
    await asyncio.gather(*workers, return_exceptions=True)


async def _serve_api(
    settings: Settings,
    shutdown: _Shutdown,
    banner: str | None,
    watched: Sequence[EmbeddedServer],
    tracer: TracerProvider,
) -> None:
    """Serve until a signal or the death of a `watched` server; print `banner` once up."""
    app = create_app(settings, tracer_provider=tracer)
    app.on_startup.append(heap.settle)
    config = uvicorn.Config(
        app,
        host=settings.http_host,
        port=settings.http_port,
        loop="uvloop",
        # The C parser (httptools), not h11's pure Python: about a third of the CPU that
        # uvicorn and the app spend on a request that does no I/O (ADR 0013).
        http="httptools",
        log_level=settings.log_level,
        # The process's logging (ledger.logs) formats uvicorn's lines too; the API writes
        # its own line per request, with the request id and the user.
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=API_STOP_TIMEOUT_S,
    )
    server = _Server(config)
    shutdown.server = server
    if shutdown.requested:
        return
    serving = asyncio.create_task(server.serve())
    watching = asyncio.create_task(_watch(watched, server, shutdown))
    try:
        await _wait_started(server, serving)
        if server.started and banner is not None:
            print(banner, flush=True)
        await serving
    finally:
        watching.cancel()


async def _watch(
    servers: Sequence[EmbeddedServer], api: uvicorn.Server, shutdown: _Shutdown
) -> None:
    """Stop the API when an embedded server dies: a ledger without its store is no use."""
    while servers:
        await asyncio.sleep(WATCH_INTERVAL_S)
        for server in servers:
            status = server.poll()
            if status is not None:
                shutdown.failure = (
                    f"{server.name} exited with status {status}, see {server.log_path}"
                )
                api.should_exit = True
                return


async def _wait_started(server: uvicorn.Server, serving: asyncio.Task[None]) -> None:
    deadline = asyncio.get_running_loop().time() + API_START_TIMEOUT_S
    while not server.started and not serving.done():
        if asyncio.get_running_loop().time() > deadline:
            server.should_exit = True
            await serving
            raise RuntimeError(f"the API did not start within {API_START_TIMEOUT_S:.0f} s")
        await asyncio.sleep(POLL_INTERVAL_S)


async def _create_database(admin_url: str, name: str) -> None:
    connection = await asyncpg.connect(admin_url, timeout=CONNECT_TIMEOUT_S)
    try:
        exists = await connection.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not exists:
            await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()


def with_database(url: str, database: str) -> str:
    """`url` pointing at another database of the same server."""
    return urlunsplit(urlsplit(url)._replace(path=f"/{database}"))


def _banner(settings: Settings) -> str:
    assert settings.database_url is not None
    assert settings.nats_url is not None
    api = f"http://{settings.http_host}:{settings.http_port}"
    rows = [
        ("API", api),
        ("OpenAPI", f"{api}/schema"),
        ("PostgreSQL", _redact(settings.database_url)),
        ("NATS", _redact(settings.nats_url)),
        ("data", str(settings.data_dir)),
    ]
    lines = [f"  {name:<11} {value}" for name, value in rows]
    return "\n".join(["ledger dev is running (Ctrl-C to stop)", *lines])


def _redact(url: str) -> str:
    """The URL without its password, fit for a terminal."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))
