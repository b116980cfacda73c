"""Instruments: list one (admin). Its id is derived from its symbol."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, Router, post
from litestar.datastructures import State
from litestar.params import JSONBody
from litestar.status_codes import HTTP_201_CREATED

from api.commanding import Command, run_command, token_of
from api.errors import COMMAND_ERRORS
from api.schemas import InstrumentListedOut, ListInstrumentRequest, to_decimal
from api.security import Principal, access
from commands import instruments
from commands.runtime import Ledger
from ledger.domain.user import Role


@post(
    "/",
    status_code=HTTP_201_CREATED,
    **access(
        Role.ADMIN,
        summary="List an instrument",
        description="Symbol, currency, tick and lot sizes and precisions. SYMBOL_TAKEN if listed.",
        errors=COMMAND_ERRORS,
    ),
)
async def list_instrument(
    request: Request[Principal, Any, State], data: JSONBody[ListInstrumentRequest]
) -> Response[InstrumentListedOut]:
    ledger: Ledger = request.app.state.ledger

    async def execute(command: Command) -> InstrumentListedOut:
        message = instruments.ListInstrument(
            symbol=data.symbol,
            currency=data.currency,
            tick_size=to_decimal(data.tick_size),
            lot_size=to_decimal(data.lot_size),
            price_precision=data.price_precision,
            quantity_precision=data.quantity_precision,
        )
        result = await instruments.list_instrument(ledger, message, command.context)
        return InstrumentListedOut(
            instrument_id=instruments.instrument_stream_id(data.symbol),
            symbol=instruments.normalize_symbol(data.symbol),
            consistency_token=token_of(result),
        )

    return await run_command(request, InstrumentListedOut, HTTP_201_CREATED, execute)


router = Router(path="/api/v1/instruments", route_handlers=[list_instrument], tags=["instruments"])
