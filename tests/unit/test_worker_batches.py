"""The worker process's consumer without I/O: its durable's name, what a batch's one ack
may acknowledge, and which bodies it hands to the runners."""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import uuid4

import msgspec
import pytest
from nats.aio.msg import Msg

from projections import worker
from projections.base import LoggedEvent
from projections.registry import PROJECTIONS, select


def event(sequence: int) -> LoggedEvent:
    return LoggedEvent(
        sequence=sequence,
        stream_id=uuid4(),
        stream_type="account",
        version=1,
        topic="tests:Something",
        recorded_at=datetime.now(UTC),
        data=msgspec.Raw(b"{}"),
    )


def message(body: bytes) -> Msg:
    return Msg(None, subject="s", data=body)  # type: ignore[arg-type]


def batch(*sequences: int | None) -> list[tuple[Msg, LoggedEvent | None]]:
    """Messages in stream order; None stands for a body that is not an event."""
    return [
        (message(b"garbage"), None) if item is None else (message(b""), event(item))
        for item in sequences
    ]


def test_the_durable_is_named_from_the_selection_in_registry_order() -> None:
    assert worker.durable_name("projection", select(["all"])) == "projection-all"
    assert worker.durable_name("projection", select(list(PROJECTIONS))) == "projection-all"
    chosen = select(["trades", "orders"])
    assert worker.durable_name("p", chosen) == "p-set-orders-trades"
    # Never the earlier release's per-projection name, which is deleted.
    assert worker.durable_name("projection", select(["orders"])) != "projection-orders"


@pytest.mark.parametrize(
    ("sequences", "checkpoint", "acked"),
    [
        ((1, 2, 3), 3, 2),  # All applied: the last message.
        ((1, 2, 3), 2, 1),  # Not past an event a leading runner has not applied.
        ((1, 2, 3), 0, None),  # Nothing applied: no ack.
        ((1, 2, 3), None, 2),  # No runner holds the batch back: all of it.
        ((1, None, 3), 3, 2),  # A body that is not an event is left to the log.
        ((1, None, 3), 1, 1),
        ((1, 5, 2), 2, 0),  # Stream order: one ack covers every message before it.
    ],
)
def test_the_ack_covers_the_applied_prefix_only(
    sequences: tuple[int | None, ...], checkpoint: int | None, acked: int | None
) -> None:
    decoded = batch(*sequences)
    last = worker._last_applied(decoded, checkpoint)
    assert last is (None if acked is None else decoded[acked][0])


def test_a_body_that_is_not_an_event_is_not_handed_to_the_runners() -> None:
    good = event(7)
    assert worker._decoded(message(msgspec.json.encode(good))) == good
    assert worker._decoded(message(b"{not json")) is None
    assert worker._decoded(message(b'{"sequence": 1}')) is None  # Not the relay's body.
