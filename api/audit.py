"""Verification of the log for auditors and analysts: hash chains and the sequencer's digests.

`GET /audit/verify` recomputes, from the stored bytes, one stream's chain over a range of
versions (`stream_id`, `from_version`) and/or the global chain over a range of sequences
(`from_sequence`, `to_sequence`), and says where each first breaks and why. Every request
checks at most `limit` (<= 10,000) events per chain; the answer's `next_from_version` /
`next_from_sequence` start the next range, so a full verification walks the ranges from 1
to the end (`ledger audit verify` does exactly that). A range starts from the stored hash
just before it, or, for the global chain, from the auditor's own copy (`anchor`).

`GET /audit/digests` pages the digests the sequencer closes every N sequences: the global
hash at the end of each range. An auditor keeps them outside the database; verifying a
digest's range with the previous digest's hash as `anchor` recomputes its hash from the
events alone.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Final
from uuid import UUID

import asyncpg
import msgspec
from litestar import Request, Router, get
from litestar.datastructures import State
from litestar.params import FromQuery, QueryParameter

from api.errors import ApiProblem
from api.events import (
    AUDIT_ROLES,
    PAGE_LIMIT_DEFAULT,
    PAGE_LIMIT_MAX,
    _decode_cursor,
    _encode_cursor,
)
from api.security import Principal, access
from ledger import sequencer
from ledger.audit import head_sequence
from ledger.errors import StreamNotFoundError
from ledger.store import EventStore, verify_stream_range

VERIFY_EVENTS_MAX: Final = 10_000
VERIFY_EVENTS_DEFAULT: Final = 1_000
STATEMENT_TIMEOUT_S: Final = 10.0
HASH_PATTERN: Final = r"^[0-9a-f]{64}$"


class StreamBreakOut(msgspec.Struct, frozen=True, kw_only=True):
    """The first version whose stored bytes do not check out."""

    version: int
    position: int
    reason: str


class StreamVerificationOut(msgspec.Struct, frozen=True, kw_only=True):
    """One stream's chain over versions from_version .. from_version + checked (- 1 if ok)."""

    stream_id: UUID
    from_version: int
    checked: int
    head_version: int
    ok: bool
    broken: StreamBreakOut | None
    next_from_version: int | None


class SequenceBreakOut(msgspec.Struct, frozen=True, kw_only=True):
    """The first sequence at which the stored global order does not check out."""

    sequence: int
    position: int | None
    reason: str


class LogVerificationOut(msgspec.Struct, frozen=True, kw_only=True):
    """The global chain over sequences from_sequence .. to_sequence; `global_hash` is the
    recomputed hash after the last sequence checked (compare it with a digest you kept), null
    when nothing was checked."""

    from_sequence: int
    to_sequence: int
    head_sequence: int
    checked: int
    ok: bool
    broken: SequenceBreakOut | None
    global_hash: str | None
    next_from_sequence: int | None


class VerificationOut(msgspec.Struct, frozen=True, kw_only=True):
    ok: bool
    stream: StreamVerificationOut | None
    log: LogVerificationOut | None


class DigestOut(msgspec.Struct, frozen=True, kw_only=True):
    """The global hash at the end of sequences first_sequence..last_sequence."""

    first_sequence: int
    last_sequence: int
    global_hash: str
    recorded_at: datetime


class DigestPage(msgspec.Struct, frozen=True, kw_only=True):
    digests: list[DigestOut]
    next_cursor: str | None


@get(
    "/verify",
    **access(
        *AUDIT_ROLES,
        summary="Verify the hash chains",
        description="Recomputes from the stored bytes one stream's chain (`stream_id`, from "
        "`from_version`) and/or the global chain over sequences `from_sequence`.."
        "`to_sequence` (the global chain alone when no stream is named), at most `limit` "
        "events each, and names the first version or sequence that breaks and why. Follow "
        "`next_from_version` / `next_from_sequence` for the rest. `anchor`: your own copy of "
        "the global hash before `from_sequence` (a digest's), instead of the stored one.",
        errors=(404,),
    ),
)
async def verify(
    request: Request[Principal, Any, State],
    stream_id: FromQuery[UUID | None] = None,
    from_version: Annotated[int, QueryParameter(ge=1, le=2**62)] = 1,
    from_sequence: Annotated[int | None, QueryParameter(ge=1, le=2**62)] = None,
    to_sequence: Annotated[int | None, QueryParameter(ge=1, le=2**62)] = None,
    anchor: Annotated[str | None, QueryParameter(pattern=HASH_PATTERN)] = None,
    limit: Annotated[
        int, QueryParameter(ge=1, le=VERIFY_EVENTS_MAX, description="At most 10,000.")
    ] = VERIFY_EVENTS_DEFAULT,
) -> VerificationOut:
    pool: asyncpg.Pool = request.app.state.pool
    wants_log = stream_id is None or from_sequence is not None or to_sequence is not None
    if to_sequence is not None and to_sequence < (from_sequence or 1):
        raise ApiProblem(400, "INVALID_RANGE", "to_sequence is before from_sequence")
    if anchor is not None and not wants_log:
        raise ApiProblem(400, "INVALID_RANGE", "an anchor needs a range of sequences")
    stream = None
    if stream_id is not None:
        stream = await _verify_stream(pool, stream_id, from_version, limit)
    log = None
    if wants_log:
        previous = None if anchor is None else bytes.fromhex(anchor)
        log = await _verify_log(pool, from_sequence or 1, to_sequence, limit, previous)
    ok = (stream is None or stream.ok) and (log is None or log.ok)
    return VerificationOut(ok=ok, stream=stream, log=log)


async def _verify_stream(
    pool: asyncpg.Pool, stream_id: UUID, from_version: int, limit: int
) -> StreamVerificationOut:
    store = EventStore(pool)
    try:
        result = await verify_stream_range(
            store, stream_id, first_version=from_version, limit=limit
        )
    except StreamNotFoundError:
        raise ApiProblem(404, "STREAM_NOT_FOUND", f"stream {stream_id} has no events") from None
    head = await store.stream_version(stream_id)
    last = from_version + result.checked - 1
    broken = result.broken
    return StreamVerificationOut(
        stream_id=stream_id,
        from_version=from_version,
        checked=result.checked,
        head_version=head,
        ok=broken is None,
        broken=None if broken is None else StreamBreakOut(**msgspec.structs.asdict(broken)),
        next_from_version=last + 1 if broken is None and last < head else None,
    )


async def _verify_log(
    pool: asyncpg.Pool,
    from_sequence: int,
    to_sequence: int | None,
    limit: int,
    anchor: bytes | None,
) -> LogVerificationOut:
    async with pool.acquire() as connection:
        head = await head_sequence(connection)
        last = min(from_sequence + limit - 1, head, to_sequence or head)
        if last < from_sequence:
            # Nothing numbered in the range yet: an empty check that breaks nothing.
            return LogVerificationOut(
                from_sequence=from_sequence,
                to_sequence=from_sequence - 1,
                head_sequence=head,
                checked=0,
                ok=True,
                broken=None,
                global_hash=None,
                next_from_sequence=None,
            )
        result = await sequencer.verify_range(
            connection, from_sequence, last, previous_global_hash=anchor
        )
    broken = result.broken
    wanted_last = head if to_sequence is None else min(to_sequence, head)
    return LogVerificationOut(
        from_sequence=from_sequence,
        to_sequence=last,
        head_sequence=head,
        checked=result.checked,
        ok=broken is None,
        broken=None if broken is None else SequenceBreakOut(**msgspec.structs.asdict(broken)),
        global_hash=result.global_hash.hex() if result.checked else None,
        next_from_sequence=last + 1 if broken is None and last < wanted_last else None,
    )


_DIGESTS_SQL: Final = (
    "SELECT first_sequence, last_sequence, global_hash, recorded_at FROM ledger.digests "
    "WHERE last_sequence > $1 ORDER BY last_sequence LIMIT $2"
)


@get(
    "/digests",
    **access(
        *AUDIT_ROLES,
        summary="The sequencer's digests",
        description="The global hash at the end of each range of sequences the sequencer "
        "closed, in order, paged by `cursor`. Keep them outside the database; "
        "`/audit/verify?from_sequence=first&to_sequence=last&anchor=<previous digest's hash>` "
        "recomputes a digest's hash from the events.",
    ),
)
async def digests(
    request: Request[Principal, Any, State],
    cursor: Annotated[str | None, QueryParameter(max_length=64)] = None,
    limit: Annotated[
        int, QueryParameter(ge=1, le=PAGE_LIMIT_MAX, description="At most 500.")
    ] = PAGE_LIMIT_DEFAULT,
) -> DigestPage:
    after = _decode_cursor(cursor, "d")
    pool: asyncpg.Pool = request.app.state.pool
    rows = await pool.fetch(_DIGESTS_SQL, after, limit, timeout=STATEMENT_TIMEOUT_S)
    page = [
        DigestOut(
            first_sequence=row["first_sequence"],
            last_sequence=row["last_sequence"],
            global_hash=bytes(row["global_hash"]).hex(),
            recorded_at=row["recorded_at"],
        )
        for row in rows
    ]
    next_cursor = _encode_cursor("d", page[-1].last_sequence) if len(page) == limit else None
    return DigestPage(digests=page, next_cursor=next_cursor)


router = Router(path="/api/v1/audit", route_handlers=[verify, digests], tags=["audit"])
