"""Errors of the event store. Each has a stable `code` that the API returns as is."""

from __future__ import annotations

from uuid import UUID


class LedgerError(Exception):
    """Base of every typed error the ledger raises on purpose."""

    code = "LEDGER_ERROR"


class ConcurrencyError(LedgerError):
    """Raised when a stream is not at the version an append expected."""

    code = "CONCURRENCY_CONFLICT"

    def __init__(self, stream_id: UUID, expected_version: int, actual_version: int | None) -> None:
        self.stream_id = stream_id
        self.expected_version = expected_version
        self.actual_version = actual_version
        super().__init__(
            f"stream {stream_id} expected at version {expected_version}, "
            f"found at version {actual_version if actual_version is not None else 'unknown'}"
        )


class StreamNotFoundError(LedgerError):
    """Raised when a stream that has no events is read."""

    code = "STREAM_NOT_FOUND"

    def __init__(self, stream_id: UUID) -> None:
        self.stream_id = stream_id
        super().__init__(f"stream {stream_id} has no events")


class EventTooLargeError(LedgerError):
    """Raised when an event's encoded payload exceeds the per-event size cap."""

    code = "EVENT_TOO_LARGE"

    def __init__(self, topic: str, size_bytes: int, size_bytes_max: int) -> None:
        self.size_bytes = size_bytes
        super().__init__(f"{topic} payload is {size_bytes} bytes; the cap is {size_bytes_max}")


class EventEncodingError(LedgerError):
    """Raised when an event's payload cannot be encoded as JSON by msgspec."""

    code = "EVENT_NOT_ENCODABLE"


class InvalidAppendError(LedgerError):
    """Raised when an append is malformed: empty, too large, or without expected versions."""

    code = "INVALID_APPEND"


class DuplicateEventError(LedgerError):
    """Raised when an appended event id is already in the log."""

    code = "DUPLICATE_EVENT"


class IdempotencyConflictError(LedgerError):
    """Raised when an idempotency key is reused for a different request."""

    code = "IDEMPOTENCY_KEY_REUSED"

    def __init__(self, key: str) -> None:
        self.key = key
        super().__init__(f"idempotency key {key!r} was already used for another request")
