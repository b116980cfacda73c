"""Whose is it: a trader acts only on their own accounts, orders and strategies.

The check loads the stream's current state through the command side's repository (and
its cache); a stream that does not exist passes, so that the command itself answers
with its NOT_FOUND code. The command re-reads the stream when it runs; ownership never
changes once set, so the check cannot go stale in between.
"""

from __future__ import annotations

from uuid import UUID

from api.errors import ApiProblem
from api.security import Principal
from commands.orders import load_order
from commands.runtime import Ledger
from ledger.domain import account, strategy
from ledger.domain.user import Role


def _not_yours(what: str) -> ApiProblem:
    return ApiProblem(403, "NOT_OWNER", f"this {what} belongs to another user")


async def check_account(ledger: Ledger, principal: Principal, account_id: UUID) -> None:
    if principal.role is Role.ADMIN:
        return
    loaded = await ledger.repository.load({account_id: account.STREAM_TYPE})
    state = loaded[account_id].state
    if state is not None and state.user_id != principal.user_id:
        raise _not_yours("account")


async def check_order(ledger: Ledger, principal: Principal, order_id: UUID) -> None:
    if principal.role is Role.ADMIN:
        return
    streams = await load_order(ledger.repository, order_id)
    if streams.account is not None and streams.account.user_id != principal.user_id:
        raise _not_yours("order")


async def check_strategy(ledger: Ledger, principal: Principal, strategy_id: UUID) -> None:
    if principal.role is Role.ADMIN:
        return
    loaded = await ledger.repository.load({strategy_id: strategy.STREAM_TYPE})
    state = loaded[strategy_id].state
    if state is not None and state.owner_id != principal.user_id:
        raise _not_yours("strategy")
