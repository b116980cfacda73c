"""`ledger serve --workers N`: N API processes sharing one listening socket.

Python runs one request's code at a time per process, so one process uses one core at
most; a machine with more cores needs more processes. uvicorn's own supervisor does it:
this process binds the socket once, starts N worker processes (spawned, not forked, so
no event loop or pool is shared), restarts one that dies, and on SIGINT or SIGTERM asks
every worker to stop (each drains its connections, like `ledger serve` alone) and waits
for them. A worker asks Linux for SIGTERM when this supervisor dies, so a supervisor
killed outright leaves no worker behind.

Each worker builds its own app from the settings the supervisor resolved (environment
plus command-line options, passed to it pickled), with its own pool, NATS connection,
stream cache, tracer provider and metrics: see ADR 0008 for what is per process. The
metrics are written to a folder the workers share (`shared_metrics`), so that /metrics
answers for the whole server whichever worker takes the scrape.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import uvicorn
from litestar import Litestar
from uvicorn.supervisors import Multiprocess

from ledger import heap
from ledger.logs import configure_logging
from ledger.settings import Settings
from ledger.tracing import tracer_provider

WORKERS_MAX: Final = 64
STOP_TIMEOUT_S: Final = 10
PR_SET_PDEATHSIG: Final = 1
MULTIPROC_DIR: Final = "PROMETHEUS_MULTIPROC_DIR"
METRICS_FOLDER_PREFIX: Final = "ledger-metrics-"


def serve_workers(settings: Settings, workers: int) -> int:
    """Serve the API from `workers` processes until SIGINT or SIGTERM; the exit code."""
    assert 2 <= workers <= WORKERS_MAX, workers
    config = uvicorn.Config(
        functools.partial(worker_app, settings, os.getpid()),
        factory=True,
        host=settings.http_host,
        port=settings.http_port,
        workers=workers,
        loop="uvloop",
        # The C parser (httptools), not h11's pure Python: about a third of the CPU that
        # uvicorn and the app spend on a request that does no I/O (ADR 0013).
        http="httptools",
        log_level=settings.log_level,
        # As in `ledger serve` alone: ledger.logs formats everything, the API writes its
        # own line per request.
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=STOP_TIMEOUT_S,
    )
    socket = config.bind_socket()
    try:
        with shared_metrics():
            Multiprocess(config, sockets=[socket]).run()
    finally:
        socket.close()
    return 0


@contextlib.contextmanager
def shared_metrics() -> Iterator[Path]:
    """The workers' Prometheus metrics in one folder, so that any worker's /metrics
    answers for all of them (prometheus_client's multiprocess mode; Litestar's controller
    merges the folder when PROMETHEUS_MULTIPROC_DIR is set). Without it a scrape saw the
    counters of whichever worker took the connection.

    The folder given in PROMETHEUS_MULTIPROC_DIR is emptied of earlier runs' files, as
    prometheus_client asks; without one, a folder of this run's is made and removed at the
    end. Set before the workers are spawned: they read it when they import the metrics.
    """
    given = os.environ.get(MULTIPROC_DIR)
    if given:
        folder = Path(given)
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob("*.db"):
            stale.unlink()
        yield folder
        return
    folder = Path(tempfile.mkdtemp(prefix=f"{METRICS_FOLDER_PREFIX}{os.getpid()}-"))
    os.environ[MULTIPROC_DIR] = str(folder)
    try:
        yield folder
    finally:
        del os.environ[MULTIPROC_DIR]
        shutil.rmtree(folder, ignore_errors=True)


def worker_app(settings: Settings, supervisor_pid: int) -> Litestar:
    """In a worker process: its logging, its death with the supervisor, and its app."""
    from api.app import create_app

    configure_logging(settings.log_level, settings.log_format)
    _die_with(supervisor_pid)
    provider = tracer_provider(settings, "api")
    app = create_app(settings, tracer_provider=provider)
    app.on_startup.append(heap.settle)
    # Flushes the spans still buffered once the last request is done.
    app.on_shutdown.append(provider.shutdown)
    return app


def _die_with(supervisor_pid: int) -> None:
    """Ask Linux for SIGTERM when the supervisor ends (elsewhere: rely on its stop)."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != supervisor_pid:
        # The supervisor died before the request was made: the signal will never come.
        os.kill(os.getpid(), signal.SIGTERM)
