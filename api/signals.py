"""Signals: a trader emits a BUY / SELL / HOLD signal of a strategy they own."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, Router, post
from litestar.datastructures import State
from litestar.params import JSONBody
from litestar.status_codes import HTTP_201_CREATED

from api import ownership
from api.commanding import Command, run_command, token_of
from api.errors import COMMAND_ERRORS
from api.schemas import EmitSignalRequest, SignalEmittedOut, to_decimal
from api.security import Principal, access, principal_of
from commands import signals
from commands.runtime import Ledger
from ledger.domain.user import Role


@post(
    "/",
    status_code=HTTP_201_CREATED,
    **access(
        Role.TRADER,
        summary="Emit a signal",
        description="The strategy must be the caller's own and active.",
        errors=COMMAND_ERRORS,
    ),
)
async def emit_signal(
    request: Request[Principal, Any, State], data: JSONBody[EmitSignalRequest]
) -> Response[SignalEmittedOut]:
    ledger: Ledger = request.app.state.ledger
    await ownership.check_strategy(ledger, principal_of(request), data.strategy_id)

    async def execute(command: Command) -> SignalEmittedOut:
        signal_id = command.new_id("signal")
        message = signals.EmitSignal(
            signal_id=signal_id,
            strategy_id=data.strategy_id,
            instrument_id=data.instrument_id,
            action=data.action,
            strength=to_decimal(data.strength),
            reasons=tuple(data.reasons),
            indicators={name: to_decimal(value) for name, value in data.indicators.items()},
        )
        result = await signals.emit_signal(ledger, message, command.context)
        return SignalEmittedOut(signal_id=signal_id, consistency_token=token_of(result))

    return await run_command(request, SignalEmittedOut, HTTP_201_CREATED, execute)


router = Router(path="/api/v1/signals", route_handlers=[emit_signal], tags=["signals"])
