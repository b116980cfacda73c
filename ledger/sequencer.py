"""The sequencer: one gapless global `sequence` per event, and the global hash chain.

The relay's leader reads the committed log in (tx, position) order (see
`EventStore.read_committed` for why that order never skips an event) and numbers the
events 1, 2, 3, … in that order. Each number extends the global chain:
global_hash(n) = sha256(global_hash(n - 1) || hash of the event numbered n), with 32 zero
bytes before 1. At every multiple of `digest_every` it also closes a digest (the range
since the previous digest and the global hash at its end), an auditor's checkpoint. A
batch of numbers, the digests it closes and the cursor in ledger.relay_state are written
in one transaction, and the cursor only moves if it is still where this writer read it,
so two writers can never both number the same events.

`assign` and `verify` are pure; the rest are single bounded statements on a connection
the caller owns.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Final

import asyncpg
import msgspec

from ledger import chain
from ledger.errors import LedgerError
from ledger.store import RecordedEvent

GENESIS: Final = bytes(32)
SEQUENCE_BATCH_MAX: Final = 10_000
VERIFY_BATCH: Final = 2_000
DIGEST_EVERY_DEFAULT: Final = 1_000
STATEMENT_TIMEOUT_S: Final = 10.0


class SequencerConflictError(LedgerError):
    """Raised when the relay's cursor moved under a writer: another relay is numbering."""

    code = "SEQUENCER_CONFLICT"


class Unsequenced(msgspec.Struct, frozen=True):
    """What numbering an event needs: its place in commit order and its chain hash."""

    tx: int
    position: int
    hash: bytes


class Cursor(msgspec.Struct, frozen=True):
    """How far the sequencer has come: the last number given, to which event, and the
    global hash there; `digested` is the last number that closed a digest."""

    sequence: int
    tx: int
    position: int
    global_hash: bytes
    digested: int


START: Final = Cursor(0, 0, 0, GENESIS, 0)


class SequenceRow(msgspec.Struct, frozen=True):
    sequence: int
    position: int
    tx: int
    global_hash: bytes


class Digest(msgspec.Struct, frozen=True):
    """The global hash at the end of sequences first_sequence..last_sequence."""

    first_sequence: int
    last_sequence: int
    global_hash: bytes


class Batch(msgspec.Struct, frozen=True):
    """Numbers given to consecutive events, the digests they close, and the cursors."""

    rows: list[SequenceRow]
    digests: list[Digest]
    before: Cursor
    after: Cursor


def link(previous_global_hash: bytes, event_hash: bytes) -> bytes:
    """The global hash of an event whose predecessor in global order has the one given."""
    return hashlib.sha256(previous_global_hash + event_hash).digest()


def assign(cursor: Cursor, events: Sequence[Unsequenced], *, digest_every: int) -> Batch:
    """Number events that follow the cursor in (tx, position) order and extend the chain."""
    assert events, "a batch numbers at least one event"
    assert digest_every >= 1, digest_every
    rows: list[SequenceRow] = []
    digests: list[Digest] = []
    sequence, global_hash, digested = cursor.sequence, cursor.global_hash, cursor.digested
    previous = (cursor.tx, cursor.position)
    for event in events:
        # The reader's order is the contract: numbers must follow commit order exactly.
        assert (event.tx, event.position) > previous, (previous, event)
        assert len(event.hash) == 32, event
        previous = (event.tx, event.position)
        sequence += 1
        global_hash = link(global_hash, event.hash)
        rows.append(SequenceRow(sequence, event.position, event.tx, global_hash))
        if sequence % digest_every == 0:
            digests.append(Digest(digested + 1, sequence, global_hash))
            digested = sequence
    last = events[-1]
    after = Cursor(sequence, last.tx, last.position, global_hash, digested)
    assert after.sequence == cursor.sequence + len(events)
    return Batch(rows, digests, cursor, after)


_CURSOR_SQL: Final = """
SELECT r.sequenced, r.sequenced_tx, r.sequenced_position, r.digested,
       coalesce(s.global_hash, $1::bytea) AS global_hash
FROM ledger.relay_state r LEFT JOIN ledger.sequence s ON s.sequence = r.sequenced
WHERE r.singleton"""

# Only transactions below the snapshot's xmin have all ended: see ledger/store.py.
_UNSEQUENCED_SQL: Final = """
SELECT tx, notification_id, hash FROM ledger.events
WHERE (tx, notification_id) > ($1::xid8, $2)
  AND tx < pg_snapshot_xmin(pg_current_snapshot())
ORDER BY tx, notification_id LIMIT $3"""

_MOVE_CURSOR_SQL: Final = """
UPDATE ledger.relay_state
SET sequenced = $1, sequenced_tx = $2, sequenced_position = $3, digested = $4,
    updated_at = now()
WHERE singleton AND sequenced = $5"""

_INSERT_SEQUENCE_SQL: Final = """
INSERT INTO ledger.sequence (sequence, position, tx, global_hash)
SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::xid8[], $4::bytea[])"""

_INSERT_DIGESTS_SQL: Final = """
INSERT INTO ledger.digests (first_sequence, last_sequence, global_hash)
SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bytea[])"""


async def load_cursor(connection: asyncpg.Connection) -> Cursor:
    """The cursor as last committed, with the global hash of its last number."""
    row = await connection.fetchrow(_CURSOR_SQL, GENESIS, timeout=STATEMENT_TIMEOUT_S)
    assert row is not None, "migration 0003 inserts the relay_state row"
    return Cursor(
        sequence=row["sequenced"],
        tx=row["sequenced_tx"],
        position=row["sequenced_position"],
        global_hash=bytes(row["global_hash"]),
        digested=row["digested"],
    )


async def read_unsequenced(
    connection: asyncpg.Connection, cursor: Cursor, *, limit: int
) -> list[Unsequenced]:
    """The next committed events after the cursor, in (tx, position) order."""
    assert 1 <= limit <= SEQUENCE_BATCH_MAX, limit
    rows = await connection.fetch(
        _UNSEQUENCED_SQL, cursor.tx, cursor.position, limit, timeout=STATEMENT_TIMEOUT_S
    )
    return [Unsequenced(row[0], row[1], bytes(row[2])) for row in rows]


async def record(connection: asyncpg.Connection, batch: Batch) -> None:
    """Write a batch's numbers, digests and cursor in one transaction.

    Raises SequencerConflictError, writing nothing, if the stored cursor is no longer the
    one the batch was numbered from.
    """
    after = batch.after
    async with connection.transaction():
        # The cursor first: a second writer waits here on the row lock, then finds it moved.
        status = await connection.execute(
            _MOVE_CURSOR_SQL,
            after.sequence,
            after.tx,
            after.position,
            after.digested,
            batch.before.sequence,
            timeout=STATEMENT_TIMEOUT_S,
        )
        if status != "UPDATE 1":
            raise SequencerConflictError(
                f"the relay cursor is no longer at sequence {batch.before.sequence}; "
                "another relay is numbering events"
            )
        rows = batch.rows
        await connection.execute(
            _INSERT_SEQUENCE_SQL,
            [row.sequence for row in rows],
            [row.position for row in rows],
            [row.tx for row in rows],
            [row.global_hash for row in rows],
            timeout=STATEMENT_TIMEOUT_S,
        )
        if batch.digests:
            await connection.execute(
                _INSERT_DIGESTS_SQL,
                [digest.first_sequence for digest in batch.digests],
                [digest.last_sequence for digest in batch.digests],
                [digest.global_hash for digest in batch.digests],
                timeout=STATEMENT_TIMEOUT_S,
            )


class SequencedEvent(msgspec.Struct, frozen=True):
    """A stored event with its number in global order and the global hash there."""

    sequence: int
    sequence_tx: int
    global_hash: bytes
    event: RecordedEvent


_READ_SEQUENCED_SQL: Final = """
SELECT s.sequence, s.tx AS sequence_tx, s.global_hash,
       e.notification_id AS position, e.tx, e.event_id, e.originator_id AS stream_id,
       e.stream_type, e.originator_version AS version, e.topic, e.schema_version,
       e.recorded_at, e.actor, e.correlation_id, e.causation_id, e.idempotency_key,
       e.state AS data, e.prev_hash, e.hash, e.trace_context
FROM ledger.sequence s JOIN ledger.events e ON e.notification_id = s.position
WHERE s.sequence > $1 AND s.sequence <= $2
ORDER BY s.sequence LIMIT $3"""


async def read_sequenced(
    connection: asyncpg.Connection, *, after: int, up_to: int = 2**62, limit: int
) -> list[SequencedEvent]:
    """Events in global order with sequence numbers in (after, up_to], at most `limit`."""
    assert 1 <= limit <= SEQUENCE_BATCH_MAX, limit
    rows = await connection.fetch(
        _READ_SEQUENCED_SQL, after, up_to, limit, timeout=STATEMENT_TIMEOUT_S
    )
    return [_sequenced(row) for row in rows]


def _sequenced(row: asyncpg.Record) -> SequencedEvent:
    event = RecordedEvent(
        position=row["position"],
        tx=row["tx"],
        event_id=row["event_id"],
        stream_id=row["stream_id"],
        stream_type=row["stream_type"],
        version=row["version"],
        topic=row["topic"],
        schema_version=row["schema_version"],
        recorded_at=row["recorded_at"],
        actor=row["actor"],
        correlation_id=row["correlation_id"],
        causation_id=row["causation_id"],
        idempotency_key=row["idempotency_key"],
        data=bytes(row["data"]),
        prev_hash=bytes(row["prev_hash"]),
        hash=bytes(row["hash"]),
        trace_context=row["trace_context"],
    )
    return SequencedEvent(row["sequence"], row["sequence_tx"], bytes(row["global_hash"]), event)


class GlobalBreak(msgspec.Struct, frozen=True):
    """The first sequence at which the stored global order does not check out."""

    sequence: int
    position: int | None
    reason: str


class GlobalVerification(msgspec.Struct, frozen=True):
    first_sequence: int
    checked: int
    global_hash: bytes
    broken: GlobalBreak | None

    @property
    def ok(self) -> bool:
        return self.broken is None


def verify(
    first_sequence: int,
    previous_global_hash: bytes,
    items: Sequence[SequencedEvent],
    *,
    previous_order: tuple[int, int] = (0, 0),
    digests: Mapping[int, bytes] | None = None,
) -> GlobalVerification:
    """Recompute the global chain over consecutive sequences from `first_sequence`.

    Each event must match its own hash (its content and stored prev_hash), follow the
    previous one in (tx, position) order, carry its own tx, and extend the chain; a
    digest recorded at a sequence (`digests`: last_sequence -> global hash) must agree.
    """
    global_hash, order = previous_global_hash, previous_order
    digests = {} if digests is None else digests
    for offset, item in enumerate(items):
        expected = first_sequence + offset
        broken = _check(item, expected, global_hash, order, digests.get(expected))
        if broken is not None:
            return GlobalVerification(first_sequence, offset, global_hash, broken)
        global_hash, order = item.global_hash, (item.event.tx, item.event.position)
    return GlobalVerification(first_sequence, len(items), global_hash, None)


def _check(
    item: SequencedEvent,
    expected: int,
    previous: bytes,
    order: tuple[int, int],
    digest_hash: bytes | None,
) -> GlobalBreak | None:
    event = item.event
    if item.sequence != expected:
        return GlobalBreak(expected, None, f"sequence {expected} is missing")
    digest = chain.content_digest(
        event_id=event.event_id,
        stream_id=event.stream_id,
        stream_type=event.stream_type,
        version=event.version,
        topic=event.topic,
        schema_version=event.schema_version,
        recorded_at=event.recorded_at,
        actor=event.actor,
        correlation_id=event.correlation_id,
        causation_id=event.causation_id,
        idempotency_key=event.idempotency_key,
        state=event.data,
    )
    reason: str | None = None
    if chain.link(event.prev_hash, digest) != event.hash:
        reason = "the event's content does not match its hash"
    elif item.sequence_tx != event.tx:
        reason = "the sequence row's tx is not the event's"
    elif (event.tx, event.position) <= order:
        reason = "the event does not follow the previous one in (tx, position) order"
    elif link(previous, event.hash) != item.global_hash:
        reason = "global_hash does not extend the chain"
    elif digest_hash is not None and digest_hash != item.global_hash:
        reason = "the digest ending here differs from the chain"
    return None if reason is None else GlobalBreak(item.sequence, event.position, reason)


async def verify_range(
    connection: asyncpg.Connection,
    first_sequence: int,
    last_sequence: int,
    *,
    previous_global_hash: bytes | None = None,
) -> GlobalVerification:
    """Verify sequences first..last as stored, and every digest that ends among them.

    The chain starts from `previous_global_hash` (an auditor's own copy of a digest), or
    else from the stored global hash of first_sequence - 1.
    """
    assert 1 <= first_sequence <= last_sequence, (first_sequence, last_sequence)
    start = await _start_of(connection, first_sequence, previous_global_hash)
    if isinstance(start, GlobalBreak):
        return GlobalVerification(first_sequence, 0, GENESIS, start)
    global_hash, order = start
    checked, after = 0, first_sequence - 1
    while after < last_sequence:
        items = await read_sequenced(
            connection, after=after, up_to=last_sequence, limit=VERIFY_BATCH
        )
        if not items:
            missing = GlobalBreak(after + 1, None, f"sequence {after + 1} is missing")
            return GlobalVerification(first_sequence, checked, global_hash, missing)
        digests = await _digests(connection, after + 1, items[-1].sequence)
        part = verify(after + 1, global_hash, items, previous_order=order, digests=digests)
        checked += part.checked
        if part.broken is not None:
            return GlobalVerification(first_sequence, checked, part.global_hash, part.broken)
        global_hash, order = part.global_hash, (items[-1].event.tx, items[-1].event.position)
        after = items[-1].sequence
    return GlobalVerification(first_sequence, checked, global_hash, None)


async def _start_of(
    connection: asyncpg.Connection, first_sequence: int, given: bytes | None
) -> tuple[bytes, tuple[int, int]] | GlobalBreak:
    """The global hash and (tx, position) just before first_sequence."""
    if first_sequence == 1:
        return (GENESIS if given is None else given), (0, 0)
    row = await connection.fetchrow(
        "SELECT global_hash, tx, position FROM ledger.sequence WHERE sequence = $1",
        first_sequence - 1,
        timeout=STATEMENT_TIMEOUT_S,
    )
    if row is None:
        return GlobalBreak(first_sequence - 1, None, f"sequence {first_sequence - 1} is missing")
    return (bytes(row[0]) if given is None else given), (row[1], row[2])


async def _digests(connection: asyncpg.Connection, first: int, last: int) -> dict[int, bytes]:
    rows = await connection.fetch(
        "SELECT last_sequence, global_hash FROM ledger.digests "
        "WHERE last_sequence BETWEEN $1 AND $2",
        first,
        last,
        timeout=STATEMENT_TIMEOUT_S,
    )
    return {row[0]: bytes(row[1]) for row in rows}
