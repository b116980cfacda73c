"""The eventsourcing library reads ledger.events as its own table (DESIGN.md point 7)."""

from __future__ import annotations

from eventsourcing.postgres import PostgresApplicationRecorder

from ledger.compat import eventsourcing_datastore
from ledger.store import EventStore
from tests.integration.events import new_stream, noted


async def test_postgres_application_recorder_reads_the_same_events(
    store: EventStore, database_url: str
) -> None:
    stream = new_stream()
    await store.append([noted(stream, n) for n in range(3)], {stream: 0})
    ours = await store.read_stream(stream)
    with eventsourcing_datastore(database_url) as datastore:
        recorder = PostgresApplicationRecorder(datastore, events_table_name="events")
        theirs = recorder.select_events(stream)
        assert [(e.originator_id, e.originator_version, e.topic, e.state) for e in theirs] == [
            (e.stream_id, e.version, e.topic, e.data) for e in ours
        ]
        notifications = recorder.select_notifications(start=ours[0].position, limit=3)
        assert [n.id for n in notifications] == [e.position for e in ours]
        assert [n.state for n in notifications] == [e.data for e in ours]
        assert recorder.max_notification_id() >= ours[-1].position
