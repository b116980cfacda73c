"""Whose is it: a trader acts only on their own accounts, orders and strategies.

The owner of a stream never changes once it is set (an account's user, an order's
account, a strategy's owner), so the check takes it from the command side's stream cache
when the stream is there, with no query, and otherwise loads the stream through the
repository (which caches it for the command that follows). A stream that does not exist
passes, so that the command itself answers with its NOT_FOUND code. The command re-reads
the stream when it runs.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from api.errors import ApiProblem
from api.security import Principal
from commands.orders import load_order
from commands.runtime import Ledger
from ledger.domain import account, order, strategy
from ledger.domain.user import Role


def _not_yours(what: str) -> ApiProblem:
    return ApiProblem(403, "NOT_OWNER", f"this {what} belongs to another user")


async def _state(ledger: Ledger, stream_id: UUID, stream_type: str) -> Any:
    """The stream's state, cached or loaded; None if it does not exist."""
    cached = ledger.repository.cached_state(stream_id, stream_type)
    if cached is not None:
        return cached
    loaded = await ledger.repository.load({stream_id: stream_type})
    return loaded[stream_id].state


async def check_account(ledger: Ledger, principal: Principal, account_id: UUID) -> None:
    if principal.role is Role.ADMIN:
        return
    state = await _state(ledger, account_id, account.STREAM_TYPE)
    if state is not None and state.user_id != principal.user_id:
        raise _not_yours("account")


async def check_order(ledger: Ledger, principal: Principal, order_id: UUID) -> None:
    if principal.role is Role.ADMIN:
        return
    known = ledger.repository.cached_state(order_id, order.STREAM_TYPE)
    owner = None
    if known is not None:
        owner = ledger.repository.cached_state(known.account_id, account.STREAM_TYPE)
    if owner is None:
        owner = (await load_order(ledger.repository, order_id)).account
    if owner is not None and owner.user_id != principal.user_id:
        raise _not_yours("order")


async def check_strategy(ledger: Ledger, principal: Principal, strategy_id: UUID) -> None:
    if principal.role is Role.ADMIN:
        return
    state = await _state(ledger, strategy_id, strategy.STREAM_TYPE)
    if state is not None and state.owner_id != principal.user_id:
        raise _not_yours("strategy")
