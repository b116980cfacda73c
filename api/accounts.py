"""Accounts: open a cash account (admin, or a trader for themself) and deposit (admin)."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from litestar import Request, Response, Router, post
from litestar.datastructures import State
from litestar.params import FromPath, JSONBody
from litestar.status_codes import HTTP_201_CREATED

from api.commanding import Command, run_command, token_of
from api.errors import COMMAND_ERRORS, ApiProblem
from api.schemas import (
    AccountOpenedOut,
    DepositOut,
    DepositRequest,
    OpenAccountRequest,
    from_decimal,
    to_decimal,
)
from api.security import Principal, access, principal_of
from commands import accounts
from commands.runtime import Ledger
from ledger.domain.account import account_stream_id
from ledger.domain.user import Role


@post(
    "/",
    status_code=HTTP_201_CREATED,
    **access(
        Role.ADMIN,
        Role.TRADER,
        summary="Open a cash account",
        description="One account per user and currency. A trader may open only their own.",
        errors=COMMAND_ERRORS,
    ),
)
async def open_account(
    request: Request[Principal, Any, State], data: JSONBody[OpenAccountRequest]
) -> Response[AccountOpenedOut]:
    principal = principal_of(request)
    if principal.role is Role.TRADER and data.user_id != principal.user_id:
        raise ApiProblem(403, "FORBIDDEN", "a trader may open accounts only for themself")
    ledger: Ledger = request.app.state.ledger

    async def execute(command: Command) -> AccountOpenedOut:
        message = accounts.OpenAccount(
            user_id=data.user_id,
            currency=data.currency,
            allow_short_selling=data.allow_short_selling,
            fee_rate=to_decimal(data.fee_rate),
            max_order_notional=None
            if data.max_order_notional is None
            else to_decimal(data.max_order_notional),
        )
        result = await accounts.open_account(ledger, message, command.context)
        return AccountOpenedOut(
            account_id=account_stream_id(data.user_id, data.currency),
            consistency_token=token_of(result),
        )

    return await run_command(request, AccountOpenedOut, HTTP_201_CREATED, execute)


@post(
    "/{account_id:uuid}/deposits",
    status_code=HTTP_201_CREATED,
    **access(
        Role.ADMIN,
        summary="Deposit cash",
        description="Credits the account's cash.",
        errors=COMMAND_ERRORS,
    ),
)
async def deposit(
    request: Request[Principal, Any, State],
    account_id: FromPath[UUID],
    data: JSONBody[DepositRequest],
) -> Response[DepositOut]:
    ledger: Ledger = request.app.state.ledger

    async def execute(command: Command) -> DepositOut:
        amount = to_decimal(data.amount)
        message = accounts.Deposit(account_id=account_id, amount=amount, reference=data.reference)
        result = await accounts.deposit(ledger, message, command.context)
        return DepositOut(
            account_id=account_id, amount=from_decimal(amount), consistency_token=token_of(result)
        )

    return await run_command(request, DepositOut, HTTP_201_CREATED, execute)


router = Router(path="/api/v1/accounts", route_handlers=[open_account, deposit], tags=["accounts"])
