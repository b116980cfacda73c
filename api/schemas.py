"""The API's wire types: msgspec Structs of its own, never the domain's events or states.

Money, prices, quantities and rates travel as decimal strings ("12.50"), never JSON
numbers, so no client float ever rounds them. Field constraints here catch malformed
input with a 400 VALIDATION_ERROR naming the field; the domain's rules (precision,
tick size, funds) then answer 422 with their own codes.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Final, Literal
from uuid import UUID

import msgspec
from msgspec import Meta

from ledger.domain.order import OrderType, TimeInForce
from ledger.domain.side import Side
from ledger.domain.signal import SignalAction
from ledger.domain.user import Role

DECIMAL_PATTERN: Final = r"^-?[0-9]{1,20}(\.[0-9]{1,18})?$"
# PostgreSQL text and jsonb cannot hold a NUL character: refuse it at the edge (400), rather
# than fail the query (500) or park the projection that stores it.
NO_NUL_PATTERN: Final = r"^[^\x00]*$"

DecimalString = Annotated[
    str,
    Meta(pattern=DECIMAL_PATTERN, max_length=40, description="A decimal number as a string"),
]
Email = Annotated[str, Meta(min_length=3, max_length=254, pattern=NO_NUL_PATTERN)]
Password = Annotated[str, Meta(min_length=12, max_length=128)]
Name = Annotated[str, Meta(min_length=1, max_length=100, pattern=NO_NUL_PATTERN)]
Reason = Annotated[str, Meta(max_length=500, pattern=NO_NUL_PATTERN)]
Label = Annotated[str, Meta(min_length=1, max_length=64, pattern=NO_NUL_PATTERN)]
Currency = Annotated[str, Meta(pattern=r"^[A-Z]{3,4}$")]
IndicatorName = Annotated[str, Meta(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
RequiredReason = Annotated[str, Meta(min_length=1, max_length=500, pattern=NO_NUL_PATTERN)]
UtcTime = Annotated[datetime, Meta(tz=True)]
Precision = Annotated[int, Meta(ge=0, le=10)]
ParameterValue = Annotated[str, Meta(max_length=500, pattern=NO_NUL_PATTERN)] | int | bool | None


def to_decimal(value: str) -> Decimal:
    """A validated DecimalString as a Decimal (the pattern already rules out NaN, 1e9...)."""
    return Decimal(value)


def from_decimal(value: Decimal) -> str:
    return format(value, "f")


class Request(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Base of request bodies: a misspelt field is an error, not silently ignored."""


# Auth -------------------------------------------------------------------------


class RegisterRequest(Request, frozen=True, kw_only=True):
    email: Email
    password: Password
    display_name: Name | None = None


class TokenRequest(Request, frozen=True, kw_only=True):
    email: Email
    password: Annotated[str, Meta(min_length=1, max_length=128)]


class RefreshRequest(Request, frozen=True, kw_only=True):
    refresh_token: Annotated[str, Meta(min_length=1, max_length=128)]


class LogoutRequest(Request, frozen=True, kw_only=True):
    refresh_token: Annotated[str, Meta(min_length=1, max_length=128)] | None = None


class TokenPair(msgspec.Struct, frozen=True, kw_only=True):
    access_token: str
    token_type: Literal["Bearer"]
    expires_in: int
    refresh_token: str
    refresh_expires_in: int


class UserOut(msgspec.Struct, frozen=True, kw_only=True):
    user_id: UUID
    email: str
    role: Role


class UserRegisteredOut(msgspec.Struct, frozen=True, kw_only=True):
    user_id: UUID
    email: str
    role: Role
    consistency_token: str | None


class ChangePasswordRequest(Request, frozen=True, kw_only=True):
    current_password: Annotated[str, Meta(min_length=1, max_length=128)]
    new_password: Password


class ChangeRoleRequest(Request, frozen=True, kw_only=True):
    role: Role


class DisableUserRequest(Request, frozen=True, kw_only=True):
    reason: Reason = ""


class UserChangedOut(msgspec.Struct, frozen=True, kw_only=True):
    user_id: UUID
    role: Role
    disabled: bool
    token_version: int
    consistency_token: str | None


# Commands ---------------------------------------------------------------------


class OpenAccountRequest(Request, frozen=True, kw_only=True):
    user_id: UUID
    currency: Currency
    allow_short_selling: bool = False
    fee_rate: DecimalString = "0"
    max_order_notional: DecimalString | None = None


class AccountOpenedOut(msgspec.Struct, frozen=True, kw_only=True):
    account_id: UUID
    consistency_token: str | None


class DepositRequest(Request, frozen=True, kw_only=True):
    amount: DecimalString
    reference: Annotated[str, Meta(max_length=64, pattern=NO_NUL_PATTERN)] = ""


class DepositOut(msgspec.Struct, frozen=True, kw_only=True):
    account_id: UUID
    amount: str
    consistency_token: str | None


class ListInstrumentRequest(Request, frozen=True, kw_only=True):
    symbol: Annotated[str, Meta(min_length=1, max_length=32, pattern=NO_NUL_PATTERN)]
    currency: Currency
    tick_size: DecimalString
    lot_size: DecimalString
    price_precision: Precision
    quantity_precision: Precision


class InstrumentListedOut(msgspec.Struct, frozen=True, kw_only=True):
    instrument_id: UUID
    symbol: str
    consistency_token: str | None


class CreateStrategyRequest(Request, frozen=True, kw_only=True):
    name: Name
    owner_id: UUID | None = None
    parameters: Annotated[dict[Label, ParameterValue], Meta(max_length=64)] = msgspec.field(
        default_factory=dict
    )


class StrategyCreatedOut(msgspec.Struct, frozen=True, kw_only=True):
    strategy_id: UUID
    consistency_token: str | None


class StrategyStateOut(msgspec.Struct, frozen=True, kw_only=True):
    strategy_id: UUID
    active: bool
    consistency_token: str | None


class EmitSignalRequest(Request, frozen=True, kw_only=True):
    strategy_id: UUID
    instrument_id: UUID
    action: SignalAction
    strength: DecimalString
    reasons: Annotated[list[RequiredReason], Meta(max_length=16)] = msgspec.field(
        default_factory=list
    )
    indicators: Annotated[dict[IndicatorName, DecimalString], Meta(max_length=64)] = msgspec.field(
        default_factory=dict
    )


class SignalEmittedOut(msgspec.Struct, frozen=True, kw_only=True):
    signal_id: UUID
    consistency_token: str | None


class PlaceOrderRequest(Request, frozen=True, kw_only=True):
    account_id: UUID
    instrument_id: UUID
    side: Side
    order_type: OrderType
    quantity: DecimalString
    limit_price: DecimalString | None = None
    stop_price: DecimalString | None = None
    time_in_force: TimeInForce = TimeInForce.DAY
    signal_id: UUID | None = None
    client_order_id: Label | None = None
    reference_price: DecimalString | None = None


class OrderOut(msgspec.Struct, frozen=True, kw_only=True):
    order_id: UUID
    status: str
    reason_code: str | None = None
    consistency_token: str | None


class FillOut(msgspec.Struct, frozen=True, kw_only=True):
    order_id: UUID
    fill_id: str
    status: str
    consistency_token: str | None


class CancelOrderRequest(Request, frozen=True, kw_only=True):
    reason: Reason = ""


class FillOrderRequest(Request, frozen=True, kw_only=True):
    fill_id: Label
    quantity: DecimalString
    price: DecimalString
    fee: DecimalString = "0"
    venue: Label
    executed_at: UtcTime


# Audit ------------------------------------------------------------------------


class EventOut(msgspec.Struct, frozen=True, kw_only=True):
    """An event as recorded, with its chain link; secrets in payloads are redacted."""

    sequence: int | None
    position: int
    event_id: UUID
    stream_id: UUID
    stream_type: str
    version: int
    type: str
    schema_version: int
    recorded_at: datetime
    actor: str | None
    correlation_id: UUID | None
    causation_id: UUID | None
    data: dict[str, Any]
    prev_hash: str
    hash: str


class EventPage(msgspec.Struct, frozen=True, kw_only=True):
    events: list[EventOut]
    next_cursor: str | None
