"""Double entry: an entry that does not balance per asset cannot exist."""

from __future__ import annotations

from decimal import Decimal

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.domain.postings import (
    CLEARING,
    EXTERNAL,
    Direction,
    JournalEntry,
    Posting,
    balance_change,
    balances,
    credit,
    debit,
    imbalances,
    journal_entry,
    transfer,
)


def test_a_transfer_debits_the_source_and_credits_the_destination() -> None:
    entry = journal_entry(transfer(EXTERNAL, "cash:a:available", "USD", Decimal("10.00")))
    assert [p.direction for p in entry.postings] == [Direction.DEBIT, Direction.CREDIT]
    assert balance_change(entry, "cash:a:available", "USD") == Decimal("10.00")
    assert balance_change(entry, EXTERNAL, "USD") == Decimal("-10.00")
    assert balance_change(entry, "cash:a:available", "EUR") == 0


def test_a_zero_transfer_posts_nothing() -> None:
    assert transfer(EXTERNAL, CLEARING, "USD", Decimal(0)) == ()


def test_an_entry_must_balance_per_asset_not_just_in_total() -> None:
    with pytest.raises(ValueError, match="does not balance"):
        journal_entry(debit("a", "USD", Decimal(5)), credit("b", "EUR", Decimal(5)))


def test_an_unbalanced_payload_does_not_decode() -> None:
    bad = b'{"postings":[{"ledger_account":"a","asset":"USD","direction":"debit","amount":"5"}]}'
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(bad, type=JournalEntry)


def test_a_posting_amount_must_be_positive() -> None:
    negative = Posting(
        ledger_account="a", asset="USD", direction=Direction.DEBIT, amount=Decimal(-1)
    )
    with pytest.raises(ValueError, match="> 0"):
        JournalEntry(postings=(negative, negative))


def test_a_multi_leg_entry_balances_per_asset() -> None:
    entry = journal_entry(
        debit("cash:a:reserved", "USD", Decimal("101.00")),
        credit(CLEARING, "USD", Decimal("100.00")),
        credit("fee_revenue", "USD", Decimal("1.00")),
        transfer(CLEARING, "securities:a:x", "security:x", Decimal(2)),
    )
    assert imbalances(entry.postings) == {}
    totals = balances([entry, entry])
    assert totals[("securities:a:x", "security:x")] == Decimal(4)
    assert totals[("cash:a:reserved", "USD")] == Decimal("-202.00")


_accounts = st.sampled_from(["a", "b", "c", EXTERNAL, CLEARING])
_assets = st.sampled_from(["USD", "EUR", "security:x"])
_amounts = st.decimals(min_value=Decimal("0"), max_value=Decimal("1e9"), places=2)


@given(st.lists(st.tuples(_accounts, _accounts, _assets, _amounts), max_size=20))
def test_entries_built_from_transfers_always_balance(
    moves: list[tuple[str, str, str, Decimal]],
) -> None:
    entry = journal_entry(*(transfer(*move) for move in moves))
    assert imbalances(entry.postings) == {}
    per_asset: dict[str, Decimal] = {}
    for (_, asset), total in balances([entry]).items():
        per_asset[asset] = per_asset.get(asset, Decimal(0)) + total
    assert all(total == 0 for total in per_asset.values())
