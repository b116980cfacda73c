"""Property: whatever is appended, read_stream gives back per stream, and following the
log gives back the union, each event exactly once."""

from __future__ import annotations

import asyncio
from uuid import UUID

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger.store import EventStore
from tests.integration.events import Noted, new_stream, noted

# An append: (stream slot, how many events), several appends possibly running at once.
append = st.tuples(st.integers(0, 4), st.integers(1, 5))


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(rounds=st.lists(st.lists(append, min_size=1, max_size=4), min_size=1, max_size=6))
async def test_reads_return_exactly_what_was_appended(
    store: EventStore, rounds: list[list[tuple[int, int]]]
) -> None:
    head = await store.last_checkpoint()
    streams = [new_stream() for _ in range(5)]
    appended: dict[UUID, list[Noted]] = {stream: [] for stream in streams}
    counter = 0
    for concurrent in rounds:
        batches = []
        # Appends in one round touch different streams so they cannot conflict.
        for slot, size in dict(concurrent).items():
            stream = streams[slot]
            batch = [noted(stream, counter + n) for n in range(size)]
            counter += size
            batches.append((stream, batch, len(appended[stream])))
            appended[stream].extend(event.data for event in batch)
        await asyncio.gather(
            *(store.append(batch, {stream: version}) for stream, batch, version in batches)
        )
    for stream in streams:
        if appended[stream]:
            events = await store.read_stream(stream)
            assert [event.decode(Noted) for event in events] == appended[stream]
            assert [event.version for event in events] == list(range(1, len(events) + 1))
    followed = [event async for batch in store.follow(head, batch=7) for event in batch]
    ours = [event for event in followed if event.stream_id in appended]
    assert len({event.event_id for event in ours}) == len(ours) == counter
    assert sorted(event.decode(Noted).number for event in ours) == list(range(counter))
