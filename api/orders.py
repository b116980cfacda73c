"""Orders: place and cancel (trader, own accounts only), fill (execution venue).

Placing answers 202 with the order's status: `accepted`, or `rejected` with the risk
check's code (a rejection is recorded in the log, not refused). A fill with a fill id
the order already has appends nothing and answers with a null consistency token.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from litestar import Request, Response, Router, post
from litestar.datastructures import State
from litestar.params import FromPath, JSONBody
from litestar.status_codes import HTTP_201_CREATED, HTTP_202_ACCEPTED

from api import ownership
from api.commanding import Command, run_command, token_of
from api.errors import COMMAND_ERRORS
from api.schemas import (
    CancelOrderRequest,
    FillOrderRequest,
    FillOut,
    OrderOut,
    PlaceOrderRequest,
    to_decimal,
)
from api.security import Principal, access, principal_of
from commands import orders
from commands.runtime import CommandResult, Ledger
from ledger.domain import order
from ledger.domain.user import Role


def _optional(value: str | None) -> Any:
    return None if value is None else to_decimal(value)


@post(
    "/",
    status_code=HTTP_202_ACCEPTED,
    **access(
        Role.TRADER,
        summary="Place an order",
        description="On one of the caller's accounts. Risk checks run now: the answer says "
        "`accepted` or `rejected` (with `reason_code`).",
        errors=COMMAND_ERRORS,
    ),
)
async def place_order(
    request: Request[Principal, Any, State], data: JSONBody[PlaceOrderRequest]
) -> Response[OrderOut]:
    ledger: Ledger = request.app.state.ledger
    await ownership.check_account(ledger, principal_of(request), data.account_id)

    async def execute(command: Command) -> OrderOut:
        order_id = command.new_id("order")
        message = orders.PlaceOrder(
            order_id=order_id,
            account_id=data.account_id,
            instrument_id=data.instrument_id,
            side=data.side,
            order_type=data.order_type,
            quantity=to_decimal(data.quantity),
            limit_price=_optional(data.limit_price),
            stop_price=_optional(data.stop_price),
            time_in_force=data.time_in_force,
            signal_id=data.signal_id,
            client_order_id=data.client_order_id,
            reference_price=_optional(data.reference_price),
        )
        result = await orders.place_order(ledger, message, command.context)
        return _order_out(order_id, result)

    return await run_command(request, OrderOut, HTTP_202_ACCEPTED, execute)


def _order_out(order_id: UUID, result: CommandResult) -> OrderOut:
    status, reason_code = "placed", None
    for item in result.events:
        if item.stream_id != order_id:
            continue
        if isinstance(item.event, order.OrderAccepted):
            status = "accepted"
        elif isinstance(item.event, order.OrderRejected):
            status, reason_code = "rejected", item.event.reason_code
        elif isinstance(item.event, order.OrderCancelled):
            status = "cancelled"
    return OrderOut(
        order_id=order_id,
        status=status,
        reason_code=reason_code,
        consistency_token=token_of(result),
    )


@post(
    "/{order_id:uuid}/cancel",
    status_code=HTTP_202_ACCEPTED,
    **access(
        Role.TRADER,
        summary="Cancel an order",
        description="One of the caller's open orders.",
        errors=COMMAND_ERRORS,
    ),
)
async def cancel_order(
    request: Request[Principal, Any, State],
    order_id: FromPath[UUID],
    data: JSONBody[CancelOrderRequest | None] = None,
) -> Response[OrderOut]:
    ledger: Ledger = request.app.state.ledger
    await ownership.check_order(ledger, principal_of(request), order_id)
    reason = "" if data is None else data.reason

    async def execute(command: Command) -> OrderOut:
        message = orders.CancelOrder(order_id=order_id, reason=reason)
        result = await orders.cancel_order(ledger, message, command.context)
        return _order_out(order_id, result)

    return await run_command(request, OrderOut, HTTP_202_ACCEPTED, execute)


@post(
    "/{order_id:uuid}/fills",
    status_code=HTTP_201_CREATED,
    **access(
        Role.EXECUTION,
        summary="Report a fill",
        description="From the execution venue: books the trade, moves the position and cash.",
        errors=COMMAND_ERRORS,
    ),
)
async def fill_order(
    request: Request[Principal, Any, State],
    order_id: FromPath[UUID],
    data: JSONBody[FillOrderRequest],
) -> Response[FillOut]:
    ledger: Ledger = request.app.state.ledger

    async def execute(command: Command) -> FillOut:
        message = orders.FillOrder(
            order_id=order_id,
            fill_id=data.fill_id,
            quantity=to_decimal(data.quantity),
            price=to_decimal(data.price),
            fee=to_decimal(data.fee),
            venue=data.venue,
            executed_at=data.executed_at,
        )
        result = await orders.fill_order(ledger, message, command.context)
        status = "known"
        for item in result.events:
            if isinstance(item.event, order.OrderFilled):
                status = "filled"
            elif isinstance(item.event, order.OrderPartiallyFilled):
                status = "partially_filled"
        return FillOut(
            order_id=order_id,
            fill_id=data.fill_id,
            status=status,
            consistency_token=token_of(result),
        )

    return await run_command(request, FillOut, HTTP_201_CREATED, execute)


router = Router(
    path="/api/v1/orders", route_handlers=[place_order, cancel_order, fill_order], tags=["orders"]
)
