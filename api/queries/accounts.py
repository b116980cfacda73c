"""Accounts with their balances: one account per user and currency."""

from __future__ import annotations

from typing import Final
from uuid import UUID

from api.queries.filters import CURRENCY, equals
from api.queries.model import Doc, Ownership, ReadModel
from api.queries.rows import Row
from api.queries.schemas import AccountView, amount


def _total(row: Row) -> str:
    return amount(row["available"] + row["reserved"])


MODEL: Final = ReadModel(
    name="accounts",
    one="account",
    table="read.accounts",
    view=AccountView,
    derived={"total": _total},
    sort=("opened_at", "account_id"),
    key=("account_id",),
    ownership=Ownership(condition="user_id = {}"),
    filters=(equals("user_id", UUID), CURRENCY),
    listing=Doc(
        "List accounts and balances",
        "Newest first (by `opened_at`, then id). A trader sees their own accounts. "
        "Filters: user_id, currency.",
    ),
    reading=Doc(
        "An account and its balances",
        "A trader sees their own accounts only (404 for any other).",
    ),
)
