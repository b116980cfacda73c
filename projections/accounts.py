"""Read model `accounts`: one row per account (a user's cash in one currency) with its
available and reserved balances, each the balance of its cash ledger account as moved by
the event's journal entry."""

from __future__ import annotations

from decimal import Decimal, localcontext
from typing import Final
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
from projections.base import EventMeta, Handlers, dispatch, execute

NAME: Final = "accounts"
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
    """How the entry moves the account's (available, reserved) cash.

    An account's two cash ledger accounts only ever hold its own currency, so the asset
    need not be looked up: every posting on them counts.
    """
    available, reserved = cash_available(account_id), cash_reserved(account_id)
    changes = {available: ZERO, reserved: ZERO}
    with localcontext(EXACT):
        for posting in entry.postings:
            if posting.ledger_account in changes:
                credited = posting.direction is Direction.CREDIT
                changes[posting.ledger_account] += posting.amount if credited else -posting.amount
    return changes[available], changes[reserved]


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
