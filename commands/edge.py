"""The bounds a command message is checked against before any stream is loaded.

Each command Struct of this package is the edge form of a domain command: the same
fields, typed so that decoding a message refuses what no state could make valid
(unknown enum values and fields, strings over their length, naive times) and checked in
``__post_init__`` for what msgspec cannot bound on a Decimal (finite, positive, at
most :data:`PRECISION_MAX` digits after the point, at most :data:`AMOUNT_MAX`).

What depends on state stays with the domain's decisions: a quantity on the
instrument's lot grid, a price on its tick grid, an amount at its currency's precision.
The decisions also re-check every bound here, so a command built in Python (which
msgspec does not validate) is refused all the same, only later.

Refusals are typed: a broken decimal bound raises the domain's InvalidAmountError or
PrecisionExceededError from the constructor itself; anything else msgspec refuses
while decoding becomes :class:`InvalidCommandError` from :func:`parse`.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Final, TypeVar

import msgspec

from ledger.domain.errors import ValidationError
from ledger.domain.money import AMOUNT_MAX, PRECISION_MAX, check_amount
from ledger.domain.text import LABEL_LENGTH_MAX, NAME_LENGTH_MAX, REASON_LENGTH_MAX
from ledger.domain.user import EMAIL_LENGTH_MAX, PASSWORD_HASH_LENGTH_MAX

__all__ = [
    "AMOUNT_MAX",
    "PRECISION_MAX",
    "CurrencyCode",
    "Email",
    "InvalidCommandError",
    "Label",
    "Name",
    "PasswordHash",
    "Precision",
    "Reason",
    "RequiredLabel",
    "RequiredReason",
    "Symbol",
    "UtcTime",
    "non_negative",
    "optional_positive",
    "parse",
    "positive",
]

SYMBOL_LENGTH_MAX: Final = 32
COMMAND_BYTES_MAX: Final = 64 * 1024

Label = Annotated[str, msgspec.Meta(max_length=LABEL_LENGTH_MAX)]
RequiredLabel = Annotated[str, msgspec.Meta(min_length=1, max_length=LABEL_LENGTH_MAX)]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=NAME_LENGTH_MAX)]
Reason = Annotated[str, msgspec.Meta(max_length=REASON_LENGTH_MAX)]
RequiredReason = Annotated[str, msgspec.Meta(min_length=1, max_length=REASON_LENGTH_MAX)]
Email = Annotated[str, msgspec.Meta(min_length=3, max_length=EMAIL_LENGTH_MAX)]
PasswordHash = Annotated[str, msgspec.Meta(min_length=1, max_length=PASSWORD_HASH_LENGTH_MAX)]
CurrencyCode = Annotated[str, msgspec.Meta(pattern=r"^[A-Z]{3,4}$")]
Symbol = Annotated[str, msgspec.Meta(min_length=1, max_length=SYMBOL_LENGTH_MAX)]
Precision = Annotated[int, msgspec.Meta(ge=0, le=PRECISION_MAX)]
UtcTime = Annotated[datetime, msgspec.Meta(tz=True)]

C = TypeVar("C", bound=msgspec.Struct)


class InvalidCommandError(ValidationError):
    """Raised when a command message cannot be decoded or breaks a bound of its type."""

    code = "INVALID_COMMAND"


def positive(value: Decimal, field: str) -> None:
    """Refuse a decimal that is not finite, not > 0, too large or too precise for any asset."""
    check_amount(value, PRECISION_MAX, field=field)


def non_negative(value: Decimal, field: str) -> None:
    """As :func:`positive`, with zero allowed."""
    check_amount(value, PRECISION_MAX, field=field, allow_zero=True)


def optional_positive(value: Decimal | None, field: str) -> None:
    """As :func:`positive`, for a decimal that may be absent."""
    if value is not None:
        positive(value, field)


def parse(command_type: type[C], payload: bytes | str) -> C:
    """Decode a JSON command message of ``command_type``, or refuse it with a typed error."""
    if len(payload) > COMMAND_BYTES_MAX:
        raise InvalidCommandError(f"a command is at most {COMMAND_BYTES_MAX} bytes")
    try:
        return msgspec.json.decode(payload, type=command_type)
    except msgspec.DecodeError as error:  # ValidationError is a DecodeError too.
        raise InvalidCommandError(str(error)) from None
