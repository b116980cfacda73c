"""Double-entry bookkeeping: every movement of value is one balanced journal entry.

Each currency (``"USD"``) and each security (``"security:<instrument id>"``) is
its own asset, and an entry balances per asset: for every asset, the sum of its
debits equals the sum of its credits. A :class:`JournalEntry` that does not
balance cannot be constructed or decoded.

Convention (TigerBeetle's): a transfer of an amount **from** ledger account A
**to** ledger account B debits A and credits B. A trader's cash and securities
accounts are credit-normal, their balance is credits minus debits (what the
ledger holds for the trader; a negative securities balance is a short). The
``external`` account (money outside the ledger), ``clearing`` (the street side
of every trade) and ``fee_revenue`` close the entries.

Ledger accounts of one trading account (``<id>`` is the account's stream id):

- ``cash:<id>:available``  spendable cash, never below zero;
- ``cash:<id>:reserved``   cash held for open buy orders, the sum of their holds;
- ``securities:<id>:<instrument id>``  the position, in units of the security.
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal, localcontext
from enum import StrEnum
from typing import Final
from uuid import UUID

import msgspec

from ledger.domain.money import EXACT, ZERO

EXTERNAL: Final = "external"
CLEARING: Final = "clearing"
FEE_REVENUE: Final = "fee_revenue"


def cash_available(account_id: UUID) -> str:
    return f"cash:{account_id}:available"


def cash_reserved(account_id: UUID) -> str:
    return f"cash:{account_id}:reserved"


def securities(account_id: UUID, instrument_id: UUID) -> str:
    return f"securities:{account_id}:{instrument_id}"


def security_asset(instrument_id: UUID) -> str:
    return f"security:{instrument_id}"


class Direction(StrEnum):
    DEBIT = "debit"
    CREDIT = "credit"


class Posting(msgspec.Struct, frozen=True, kw_only=True):
    """One side of a movement: ``amount`` (> 0) of ``asset`` debited or credited."""

    ledger_account: str
    asset: str
    direction: Direction
    amount: Decimal


def imbalances(postings: Iterable[Posting]) -> dict[str, Decimal]:
    """Per asset, debits minus credits, for the assets that do not balance."""
    totals: dict[str, Decimal] = {}
    with localcontext(EXACT):
        for posting in postings:
            signed = posting.amount if posting.direction is Direction.DEBIT else -posting.amount
            totals[posting.asset] = totals.get(posting.asset, ZERO) + signed
    return {asset: total for asset, total in totals.items() if total != ZERO}


class JournalEntry(msgspec.Struct, frozen=True, kw_only=True):
    """One balanced movement: postings whose debits equal their credits per asset."""

    postings: tuple[Posting, ...] = ()

    def __post_init__(self) -> None:
        # A ValueError here becomes msgspec.ValidationError when a payload is decoded.
        if any(posting.amount <= ZERO for posting in self.postings):
            raise ValueError("every posting amount must be > 0")
        unbalanced = imbalances(self.postings)
        if unbalanced:
            raise ValueError(f"journal entry does not balance: {unbalanced}")


def transfer(source: str, destination: str, asset: str, amount: Decimal) -> tuple[Posting, ...]:
    """Move ``amount`` of ``asset`` from ``source`` to ``destination``; nothing if zero."""
    assert amount >= ZERO, "a transfer amount is never negative"
    if amount == ZERO:
        return ()
    return (
        Posting(ledger_account=source, asset=asset, direction=Direction.DEBIT, amount=amount),
        Posting(ledger_account=destination, asset=asset, direction=Direction.CREDIT, amount=amount),
    )


def debit(ledger_account: str, asset: str, amount: Decimal) -> tuple[Posting, ...]:
    """One debit leg (nothing if zero); an entry built from legs must still balance."""
    assert amount >= ZERO
    if amount == ZERO:
        return ()
    return (
        Posting(
            ledger_account=ledger_account, asset=asset, direction=Direction.DEBIT, amount=amount
        ),
    )


def credit(ledger_account: str, asset: str, amount: Decimal) -> tuple[Posting, ...]:
    """One credit leg (nothing if zero); an entry built from legs must still balance."""
    assert amount >= ZERO
    if amount == ZERO:
        return ()
    return (
        Posting(
            ledger_account=ledger_account, asset=asset, direction=Direction.CREDIT, amount=amount
        ),
    )


def journal_entry(*groups: Iterable[Posting]) -> JournalEntry:
    """One entry from groups of postings, in order."""
    return JournalEntry(postings=tuple(posting for group in groups for posting in group))


def balance_change(entry: JournalEntry, ledger_account: str, asset: str) -> Decimal:
    """How ``entry`` moves the (credit-normal) balance of ``ledger_account`` in ``asset``."""
    change = ZERO
    with localcontext(EXACT):
        for posting in entry.postings:
            if posting.ledger_account != ledger_account or posting.asset != asset:
                continue
            change += posting.amount if posting.direction is Direction.CREDIT else -posting.amount
    return change


def balances(entries: Iterable[JournalEntry]) -> dict[tuple[str, str], Decimal]:
    """Credit-normal balance of every (ledger account, asset) the entries touch."""
    totals: dict[tuple[str, str], Decimal] = {}
    with localcontext(EXACT):
        for entry in entries:
            for posting in entry.postings:
                key = (posting.ledger_account, posting.asset)
                signed = (
                    posting.amount if posting.direction is Direction.CREDIT else -posting.amount
                )
                totals[key] = totals.get(key, ZERO) + signed
    return totals
