"""Small payloads and batches for store tests."""

from __future__ import annotations

from decimal import Decimal
from uuid import UUID, uuid4

import msgspec

from ledger.store import NewEvent


class Noted(msgspec.Struct, frozen=True):
    """A test payload with a decimal, so money-like values round-trip as strings."""

    number: int
    amount: Decimal = Decimal("0.01")
    text: str = ""


TOPIC = "tests.integration.events:Noted"


def noted(stream_id: UUID, number: int, **fields: object) -> NewEvent:
    return NewEvent(
        stream_id=stream_id,
        stream_type="test",
        topic=TOPIC,
        data=Noted(number, **fields),  # type: ignore[arg-type]
    )


def new_stream() -> UUID:
    return uuid4()
