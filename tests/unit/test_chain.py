"""The chain's canonical digest is a stored format: it must never change by accident."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from uuid import UUID

from ledger import chain

# The digest of these fields as format ledger.event.v1 has always computed it. A change
# here breaks the verification of every event already stored.
FIELDS = {
    "event_id": UUID(int=1),
    "stream_id": UUID(int=2),
    "stream_type": "order",
    "version": 3,
    "topic": "t:T",
    "schema_version": 1,
    "recorded_at": datetime(2026, 11, 23, 13, 0, 0, 123456, tzinfo=UTC),
    "actor": "a",
    "correlation_id": UUID(int=4),
    "causation_id": None,
    "idempotency_key": "k",
    "state": b"{}",
}
V1_DIGEST = "94b2de24700a4242b6aeb812665ee083c0b050ad13d39ff6ea05de8d277ad879"


def test_the_canonical_digest_is_stable() -> None:
    assert chain.content_digest(**FIELDS).hex() == V1_DIGEST  # type: ignore[arg-type]


def test_the_digester_of_an_append_gives_the_same_digest() -> None:
    digester = chain.Digester(FIELDS["recorded_at"], "a", UUID(int=4), None, "k")  # type: ignore[arg-type]
    for _ in range(2):  # The second time from its cache of rendered stream ids.
        digest = digester.digest(UUID(int=1), UUID(int=2), "order", 3, "t:T", 1, b"{}")
        assert digest.hex() == V1_DIGEST


def test_the_digest_is_the_same_for_one_instant_in_any_zone() -> None:
    shifted = FIELDS["recorded_at"].astimezone(timezone(timedelta(hours=5)))  # type: ignore[attr-defined]
    assert chain.content_digest(**{**FIELDS, "recorded_at": shifted}).hex() == V1_DIGEST  # type: ignore[arg-type]
