"""Daily P&L: per account and UTC day of execution, realised P&L, fees and notionals."""

from __future__ import annotations

from typing import Final

from api.queries.filters import ACCOUNT, Range
from api.queries.model import OWN_ACCOUNTS, Doc, ReadModel
from api.queries.schemas import DailyPnlView

MODEL: Final = ReadModel(
    name="daily_pnl",
    one="daily_pnl",
    path="daily-pnl",
    tag="pnl",
    rows="days",
    table="read.daily_pnl",
    view=DailyPnlView,
    sort=("day", "account_id"),
    key=("account_id", "day"),
    ownership=OWN_ACCOUNTS,
    filters=(ACCOUNT, Range("day", days=True)),
    missing="P&L of account {account_id} on {day}",
    listing=Doc(
        "List daily P&L",
        "Latest day first (then account id); days with trades only. A trader sees their "
        "own accounts. Filters: account_id, from/to (days, `to` exclusive).",
    ),
    reading=Doc(
        "One account's P&L on one day",
        "404 on a day without trades, and for a trader on another's account.",
    ),
)
