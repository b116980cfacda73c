"""The read side behind the API in tests: the real relay and projection workers.

`Pipeline` runs them as `ledger relay` and `ledger project` do, against one database and a
JetStream stream of the run's own (deleted at the end), each startable and stoppable on
its own, so a test can hold the projections back and see a query wait for them.

They run on an event loop of their own, in a thread: Litestar's AsyncTestClient serves
each request through a blocking portal, so the tests' loop stands still for as long as a
request waits, and a relay on that loop could never catch up during a
`consistent_with` wait (as it does in production, where it is another process).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

import nats
import nats.js.errors

from ledger.relay import Relay, RelayOptions
from projections.worker import WorkerOptions, run_projections

STOP_TIMEOUT_S = 30.0
STREAM_WAIT_ATTEMPTS = 400  # 50 ms apart
T = TypeVar("T")


class Pipeline:
    def __init__(self, database_url: str, nats_url: str, stream: str) -> None:
        self.database_url = database_url
        self.nats_url = nats_url
        self.stream = stream
        self._relay: tuple[asyncio.Event, asyncio.Task[Any]] | None = None
        self._workers: tuple[asyncio.Event, asyncio.Task[Any]] | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name=f"pipeline-{stream}", daemon=True
        )
        self._thread.start()

    async def _on_own_loop(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run `coroutine` on the pipeline's loop; await it from the caller's."""
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coroutine, self._loop))

    async def start_relay(self) -> None:
        await self._on_own_loop(self._start_relay())

    async def _start_relay(self) -> None:
        assert self._relay is None, "relay already running"
        stop = asyncio.Event()
        options = RelayOptions(stream_name=self.stream, subject_prefix=self.stream)
        relay = Relay(self.database_url, self.nats_url, options)
        self._relay = (stop, asyncio.create_task(relay.run(stop), name="test-relay"))

    async def start_workers(self) -> None:
        """Start the workers once the relay has made the stream (a worker started before it
        exists fails on its first subscription)."""
        await self._on_own_loop(self._start_workers())

    async def _start_workers(self) -> None:
        assert self._workers is None, "workers already running"
        await self._stream_made()
        stop = asyncio.Event()
        options = WorkerOptions(
            stream_name=self.stream,
            subject_prefix=self.stream,
            fetch_batch=100,
            fetch_timeout_s=0.2,
            retries=3,
            backoff_base_s=0.01,
            standby_retry_s=0.1,
        )
        task = asyncio.create_task(
            run_projections(
                self.database_url,
                self.nats_url,
                ["all"],
                stream_name=self.stream,
                stop=stop,
                options=options,
            ),
            name="test-projection-workers",
        )
        self._workers = (stop, task)

    async def start(self) -> None:
        await self.start_relay()
        await self.start_workers()

    async def _stream_made(self) -> None:
        client = await nats.connect(self.nats_url)
        try:
            stream = client.jetstream()
            for _ in range(STREAM_WAIT_ATTEMPTS):
                with contextlib.suppress(nats.js.errors.NotFoundError):
                    await stream.stream_info(self.stream)
                    return
                await asyncio.sleep(0.05)
        finally:
            await client.close()
        raise AssertionError(f"the relay did not create stream {self.stream}")

    async def stop_workers(self) -> None:
        await self._on_own_loop(self._stop_workers())

    async def _stop_workers(self) -> None:
        if self._workers is not None:
            await _stop(*self._workers)
            self._workers = None

    async def stop(self) -> None:
        """Stop everything, delete the stream and end the thread."""
        try:
            await self._on_own_loop(self._stop_all())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            await asyncio.to_thread(self._thread.join, STOP_TIMEOUT_S)
            if not self._thread.is_alive():
                self._loop.close()

    async def _stop_all(self) -> None:
        await self._stop_workers()
        if self._relay is not None:
            await _stop(*self._relay)
            self._relay = None
        client = await nats.connect(self.nats_url)
        try:
            with contextlib.suppress(Exception):
                await client.jetstream().delete_stream(self.stream)
        finally:
            await client.close()


async def _stop(stop: asyncio.Event, task: asyncio.Task[Any]) -> None:
    stop.set()
    done, _ = await asyncio.wait({task}, timeout=STOP_TIMEOUT_S)
    if not done:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return
    task.result()  # A worker or relay that failed says so here.
