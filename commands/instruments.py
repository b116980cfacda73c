"""Instrument commands: list, halt, resume, delist.

Unique symbols the way users have unique emails: an instrument's stream id is derived
from its normalised symbol (:func:`instrument_stream_id`), so listing a symbol twice
meets an existing stream and is refused as ``SYMBOL_TAKEN``, concurrent listings
included (the store lets one append to the new stream in). A delisted symbol stays
taken: delisting is final in the domain, and a relisting would be a new symbol.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Final
from uuid import UUID, uuid5

import msgspec

from commands.edge import CurrencyCode, Precision, Reason, Symbol, positive
from commands.runtime import (
    CommandContext,
    CommandResult,
    Decision,
    Ledger,
    execute,
    execute_on_stream,
    on_stream,
    wanted,
)
from ledger.domain import instrument

INSTRUMENT_NAMESPACE: Final = UUID("9a4e1b7c-2d6f-5c03-8b15-c6f0e8d2a947")


def normalize_symbol(symbol: str) -> str:
    """The stored form of a symbol, as the domain's listing decision makes it."""
    return symbol.strip().upper()


def instrument_stream_id(symbol: str) -> UUID:
    """The stream of the instrument listed under ``symbol``."""
    return uuid5(INSTRUMENT_NAMESPACE, normalize_symbol(symbol))


class ListInstrument(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """List an instrument; no instrument id, it is :func:`instrument_stream_id` of the symbol."""

    symbol: Symbol
    currency: CurrencyCode
    tick_size: Decimal
    lot_size: Decimal
    price_precision: Precision
    quantity_precision: Precision

    def __post_init__(self) -> None:
        positive(self.tick_size, "tick_size")
        positive(self.lot_size, "lot_size")


class HaltInstrument(
    instrument.HaltInstrument, frozen=True, kw_only=True, forbid_unknown_fields=True
):
    reason: Reason = ""


class ResumeInstrument(
    instrument.ResumeInstrument, frozen=True, kw_only=True, forbid_unknown_fields=True
):
    pass


class DelistInstrument(
    instrument.DelistInstrument, frozen=True, kw_only=True, forbid_unknown_fields=True
):
    reason: Reason = ""


async def list_instrument(
    ledger: Ledger, command: ListInstrument, context: CommandContext, *, now: datetime | None = None
) -> CommandResult:
    """InstrumentListed on the symbol's stream, or SYMBOL_TAKEN."""
    moment = ledger.now(now)
    instrument_id = instrument_stream_id(command.symbol)
    listing = instrument.ListInstrument(
        instrument_id=instrument_id,
        symbol=command.symbol,
        currency=command.currency,
        tick_size=command.tick_size,
        lot_size=command.lot_size,
        price_precision=command.price_precision,
        quantity_precision=command.quantity_precision,
    )

    async def decide() -> Decision:
        loaded = await ledger.repository.load(wanted((instrument_id, instrument.STREAM_TYPE)))
        taken = loaded[instrument_id].state is not None
        # As for emails (commands.users): the stream is the symbol's, so an existing one
        # is the symbol taken, which the decision reports as SYMBOL_TAKEN.
        events = instrument.decide_list_instrument(None, listing, now=moment, symbol_taken=taken)
        return Decision(on_stream(loaded[instrument_id], events), loaded)

    return await execute(ledger, command, context, decide)


async def halt_instrument(
    ledger: Ledger, command: HaltInstrument, context: CommandContext, *, now: datetime | None = None
) -> CommandResult:
    """InstrumentHalted: no new orders until resumed."""
    moment = ledger.now(now)
    return await execute_on_stream(
        ledger,
        command,
        context,
        (command.instrument_id, instrument.STREAM_TYPE),
        lambda state: instrument.decide_halt_instrument(state, command, now=moment),
    )


async def resume_instrument(
    ledger: Ledger,
    command: ResumeInstrument,
    context: CommandContext,
    *,
    now: datetime | None = None,
) -> CommandResult:
    """InstrumentResumed: listed again."""
    moment = ledger.now(now)
    return await execute_on_stream(
        ledger,
        command,
        context,
        (command.instrument_id, instrument.STREAM_TYPE),
        lambda state: instrument.decide_resume_instrument(state, command, now=moment),
    )


async def delist_instrument(
    ledger: Ledger,
    command: DelistInstrument,
    context: CommandContext,
    *,
    now: datetime | None = None,
) -> CommandResult:
    """InstrumentDelisted (final)."""
    moment = ledger.now(now)
    return await execute_on_stream(
        ledger,
        command,
        context,
        (command.instrument_id, instrument.STREAM_TYPE),
        lambda state: instrument.decide_delist_instrument(state, command, now=moment),
    )
