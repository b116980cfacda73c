"""Read model `accounts`: one row per account (a user's cash in one currency) with its
available and reserved balances, each the balance of its cash ledger account as moved by
the event's journal entry."""

from __future__ import annotations

from decimal import Decimal, localcontext
from typing import Any, Final
from uuid import UUID

import asyncpg

from ledger.domain import Event
from ledger.domain.account import (
    AccountOpened,
    CashDeposited,
    CashReserved,
    CashWithdrawn,
    FeeCharged,
    HoldReleased,
    TradeSettled,
)
from ledger.domain.money import EXACT, ZERO
from ledger.domain.postings import Direction, JournalEntry, cash_available, cash_reserved
from projections import batch
from projections.base import EventMeta, Handlers, dispatch, execute

NAME: Final = "accounts"
CREDIT: Final = Direction.CREDIT
TABLES: Final = ("accounts",)


async def _opened(connection: asyncpg.Connection, event: AccountOpened, meta: EventMeta) -> None:
    await execute(
        connection,
        "INSERT INTO accounts (account_id, user_id, currency, allow_short_selling, fee_rate, "
        "max_order_notional, available, reserved, opened_at, updated_at, version) "
        "VALUES ($1, $2, $3, $4, $5, $6, 0, 0, $7, $7, $8)",
        event.account_id,
        event.user_id,
        event.currency,
        event.allow_short_selling,
        event.fee_rate,
        event.max_order_notional,
        event.occurred_at,
        meta.version,
    )


def cash_changes(entry: JournalEntry, account_id: UUID) -> tuple[Decimal, Decimal]:
    """How the entry moves the account's (available, reserved) cash."""
    with localcontext(EXACT):
        return changes_on(entry, cash_available(account_id), cash_reserved(account_id))


def changes_on(entry: Any, available: str, reserved: str) -> tuple[Decimal, Decimal]:
    """How the entry's postings move two ledger accounts (in the caller's exact context).

    An account's two cash ledger accounts only ever hold its own currency, so the asset
    need not be looked up: every posting on them counts.
    """
    available_change = reserved_change = ZERO
    for posting in entry.postings:
        account = posting.ledger_account
        if account == available:
            available_change += posting.amount if posting.direction is CREDIT else -posting.amount
        elif account == reserved:
            reserved_change += posting.amount if posting.direction is CREDIT else -posting.amount
    return available_change, reserved_change


async def _posted(
    connection: asyncpg.Connection,
    event: CashDeposited | CashWithdrawn | FeeCharged | CashReserved | HoldReleased | TradeSettled,
    meta: EventMeta,
) -> None:
    available, reserved = cash_changes(event.entry, meta.stream_id)
    await execute(
        connection,
        "UPDATE accounts SET available = available + $2, reserved = reserved + $3, "
        "updated_at = $4, version = $5 WHERE account_id = $1",
        meta.stream_id,
        available,
        reserved,
        event.occurred_at,
        meta.version,
    )


# Page fold (projections/batch.py): the same rows, each written once per page.

COLUMNS: Final = (
    "account_id", "user_id", "currency", "allow_short_selling", "fee_rate",
    "max_order_notional", "available", "reserved", "opened_at", "updated_at", "version",
)  # fmt: skip
_AVAILABLE, _RESERVED, _UPDATED_AT, _VERSION = (
    COLUMNS.index(name) for name in ("available", "reserved", "updated_at", "version")
)
# Cash ledger account names remembered across pages (one pair per account).
NAMES_MAX: Final = 100_000


class Page(batch.Page):
    def __init__(self) -> None:
        adds = {"available": ZERO, "reserved": ZERO}
        self.accounts = batch.Rows("accounts", COLUMNS, "account_id", adds)
        self._names: dict[str, tuple[str, str]] = {}

    def cash_accounts(self, account_id: str) -> tuple[str, str]:
        names = self._names.get(account_id)
        if names is None:
            if len(self._names) >= NAMES_MAX:
                self._names.clear()
            names = self._names[account_id] = (
                cash_available(account_id),  # type: ignore[arg-type]
                cash_reserved(account_id),  # type: ignore[arg-type]
            )
        return names

    def taken(self) -> Any:
        return self.accounts.take()

    async def write(
        self, connection: asyncpg.Connection, schema: str, staging: batch.Staging, taken: Any
    ) -> None:
        await self.accounts.write(connection, schema, staging, taken)


def _fold_opened(page: Page, event: AccountOpened, meta: batch.Meta) -> None:
    page.accounts.insert(
        event.account_id,
        [event.account_id, event.user_id, event.currency, event.allow_short_selling,
         event.fee_rate, event.max_order_notional, ZERO, ZERO, event.occurred_at,
         event.occurred_at, meta.version],
    )  # fmt: skip


def _fold_posted(
    page: Page,
    event: CashDeposited | CashWithdrawn | FeeCharged | CashReserved | HoldReleased | TradeSettled,
    meta: batch.Meta,
) -> None:
    available, reserved = changes_on(event.entry, *page.cash_accounts(meta.stream_id))
    row = page.accounts.row(meta.stream_id)
    row[_AVAILABLE] += available
    row[_RESERVED] += reserved
    row[_UPDATED_AT] = event.occurred_at
    row[_VERSION] = meta.version


Page.FOLDS = {
    AccountOpened: _fold_opened,
    CashDeposited: _fold_posted,
    CashWithdrawn: _fold_posted,
    FeeCharged: _fold_posted,
    CashReserved: _fold_posted,
    HoldReleased: _fold_posted,
    TradeSettled: _fold_posted,
}

HANDLERS: Final[Handlers] = {
    AccountOpened: _opened,
    CashDeposited: _posted,
    CashWithdrawn: _posted,
    FeeCharged: _posted,
    CashReserved: _posted,
    HoldReleased: _posted,
    TradeSettled: _posted,
}


async def apply(connection: asyncpg.Connection, event: Event, meta: EventMeta) -> None:
    await dispatch(HANDLERS, connection, event, meta)
