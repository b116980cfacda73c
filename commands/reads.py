"""Concurrent loads merged into few queries.

Every command starts with a read of the streams it decides on. Under load, many
commands of one process read at the same moment, and each read is a round trip whose
cost, on a busy server, is mostly the trip rather than the few index lookups it makes.
So at most :data:`QUERIES_MAX` reads are in flight per process; the loads that arrive
meanwhile wait and go together, as one query, when one of them returns. A lone load is
sent at once, so this adds no latency when there is nothing to merge.

A merged read is one statement, and so one snapshot, taken no earlier than each of its
loads asked: every load still sees at least what had committed when it was made.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Mapping
from typing import Final
from uuid import UUID

from ledger.store import EventStore, RecordedEvent

QUERIES_MAX: Final = 4
STREAMS_PER_QUERY_MAX: Final = 512


class _Request:
    __slots__ = ("after", "future")

    def __init__(self, after: Mapping[UUID, int], future: asyncio.Future[list[RecordedEvent]]):
        self.after = after
        self.future = future


class StreamReader:
    """Reads the events of streams past given versions, merging concurrent reads."""

    def __init__(
        self,
        store: EventStore,
        *,
        queries_max: int = QUERIES_MAX,
        streams_per_query_max: int = STREAMS_PER_QUERY_MAX,
    ) -> None:
        assert queries_max >= 1
        assert streams_per_query_max >= 1
        self.store = store
        self.queries_max = queries_max
        self.streams_per_query_max = streams_per_query_max
        self._waiting: deque[_Request] = deque()
        self._running: set[asyncio.Task[None]] = set()

    async def read_after(self, after: Mapping[UUID, int]) -> list[RecordedEvent]:
        """The events of each stream past its version, grouped by stream in version order."""
        future: asyncio.Future[list[RecordedEvent]] = asyncio.get_running_loop().create_future()
        self._waiting.append(_Request(after, future))
        if len(self._running) < self.queries_max:
            self._send()
        # No timeout of its own: the query under it is bounded by the pool's.
        return await future

    def _send(self) -> None:
        batch: list[_Request] = []
        streams = 0
        while self._waiting and (
            not batch or streams + len(self._waiting[0].after) <= self.streams_per_query_max
        ):
            request = self._waiting.popleft()
            if request.future.done():
                continue  # Its caller was cancelled while it waited.
            batch.append(request)
            streams += len(request.after)
        if batch:
            task = asyncio.create_task(self._read(batch))
            self._running.add(task)
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        if self._waiting and len(self._running) < self.queries_max:
            self._send()

    async def _read(self, batch: list[_Request]) -> None:
        merged: dict[UUID, int] = {}
        for request in batch:
            for stream_id, version in request.after.items():
                merged[stream_id] = min(version, merged.get(stream_id, version))
        try:
            found = await self.store.read_streams_after(merged)
        except asyncio.CancelledError:
            for request in batch:
                request.future.cancel()
            raise
        except Exception as error:
            for request in batch:
                if not request.future.done():
                    request.future.set_exception(error)
            return
        for request in batch:
            if not request.future.done():
                request.future.set_result(_past(found, request.after))


def _past(found: list[RecordedEvent], after: Mapping[UUID, int]) -> list[RecordedEvent]:
    """The events of a merged read that one load asked for."""
    return [
        event
        for event in found
        if event.stream_id in after and event.version > after[event.stream_id]
    ]
