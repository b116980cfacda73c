"""Strategies: create (inactive), activate, deactivate (admin)."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from litestar import Request, Response, Router, post
from litestar.datastructures import State
from litestar.params import FromPath, JSONBody
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED

from api.commanding import Command, run_command, token_of
from api.errors import COMMAND_ERRORS
from api.schemas import CreateStrategyRequest, StrategyCreatedOut, StrategyStateOut
from api.security import Principal, access, principal_of
from commands import strategies
from commands.runtime import Ledger
from ledger.domain.user import Role


@post(
    "/",
    status_code=HTTP_201_CREATED,
    **access(
        Role.ADMIN,
        summary="Create a strategy",
        description="Created inactive; `owner_id` (default: the caller) may emit its signals.",
        errors=COMMAND_ERRORS,
    ),
)
async def create_strategy(
    request: Request[Principal, Any, State], data: JSONBody[CreateStrategyRequest]
) -> Response[StrategyCreatedOut]:
    ledger: Ledger = request.app.state.ledger
    owner_id = data.owner_id or principal_of(request).user_id

    async def execute(command: Command) -> StrategyCreatedOut:
        strategy_id = command.new_id("strategy")
        message = strategies.CreateStrategy(
            strategy_id=strategy_id,
            name=data.name,
            owner_id=owner_id,
            parameters=dict(data.parameters),
        )
        result = await strategies.create_strategy(ledger, message, command.context)
        return StrategyCreatedOut(strategy_id=strategy_id, consistency_token=token_of(result))

    return await run_command(request, StrategyCreatedOut, HTTP_201_CREATED, execute)


@post(
    "/{strategy_id:uuid}/activate",
    status_code=HTTP_200_OK,
    **access(
        Role.ADMIN,
        summary="Activate a strategy",
        description="It may emit signals.",
        errors=COMMAND_ERRORS,
    ),
)
async def activate_strategy(
    request: Request[Principal, Any, State], strategy_id: FromPath[UUID]
) -> Response[StrategyStateOut]:
    ledger: Ledger = request.app.state.ledger

    async def execute(command: Command) -> StrategyStateOut:
        message = strategies.ActivateStrategy(strategy_id=strategy_id)
        result = await strategies.activate_strategy(ledger, message, command.context)
        return StrategyStateOut(
            strategy_id=strategy_id, active=True, consistency_token=token_of(result)
        )

    return await run_command(request, StrategyStateOut, HTTP_200_OK, execute)


@post(
    "/{strategy_id:uuid}/deactivate",
    status_code=HTTP_200_OK,
    **access(
        Role.ADMIN,
        summary="Deactivate a strategy",
        description="It stops emitting.",
        errors=COMMAND_ERRORS,
    ),
)
async def deactivate_strategy(
    request: Request[Principal, Any, State], strategy_id: FromPath[UUID]
) -> Response[StrategyStateOut]:
    ledger: Ledger = request.app.state.ledger

    async def execute(command: Command) -> StrategyStateOut:
        message = strategies.DeactivateStrategy(strategy_id=strategy_id)
        result = await strategies.deactivate_strategy(ledger, message, command.context)
        return StrategyStateOut(
            strategy_id=strategy_id, active=False, consistency_token=token_of(result)
        )

    return await run_command(request, StrategyStateOut, HTTP_200_OK, execute)


router = Router(
    path="/api/v1/strategies",
    route_handlers=[create_strategy, activate_strategy, deactivate_strategy],
    tags=["strategies"],
)
