"""Money and quantities: ``Decimal`` only, never float, and every rounding rule, stated once.

Rounding rules of the whole domain
----------------------------------
1. Inputs are never rounded. An amount, price or quantity with more digits than
   its asset's precision is a :class:`PrecisionExceededError`. The check is on the
   value, so ``"1.500"`` is accepted for a 2-digit currency; accepted values are
   stored at exactly their precision (``1.50``), which keeps payloads canonical.
2. Trade cash (quantity x price) is rounded **half-even** to the currency
   precision, on the order's cumulative notional: a fill's cash is
   ``round(N_after) - round(N_before)``. The cash of all fills of an order is
   then the rounded total, and per-fill rounding never drifts.
3. Holds (reserved cash) round **up** (ceiling) to the currency precision, so a
   hold always covers the cash and fee it guards; a market buy's collar price
   rounds up to the tick grid for the same reason.
4. Cost basis removed when a position is reduced is ``basis x closed / open``,
   rounded **half-even** to the position's notional precision (price precision +
   quantity precision); closing a position in full removes exactly the remaining
   basis, so a flat position carries no residue. Realised P&L is exact given it.
5. Average cost, for display only, is rounded half-even to price precision + 4.

All arithmetic in decisions and evolution runs in :data:`EXACT` (via
:func:`exact`), which traps ``Inexact``: an operation that would round silently
raises instead, and the only rounding is the explicit kind above.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from decimal import (
    ROUND_CEILING,
    ROUND_HALF_EVEN,
    Context,
    Decimal,
    DivisionByZero,
    FloatOperation,
    Inexact,
    InvalidOperation,
    Overflow,
    localcontext,
)
from types import MappingProxyType
from typing import Final, ParamSpec, TypeVar

from ledger.domain.errors import (
    InvalidAmountError,
    PrecisionExceededError,
    UnknownCurrencyError,
)

# Bounds keep every product and sum far inside EXACT's 80 digits.
AMOUNT_MAX: Final = Decimal("1e15")
PRECISION_MAX: Final = 10
AVERAGE_COST_EXTRA_DIGITS: Final = 4

EXACT: Final = Context(
    prec=80,
    rounding=ROUND_HALF_EVEN,
    traps=[InvalidOperation, DivisionByZero, Overflow, Inexact, FloatOperation],
)
# Explicit rounding (quantize, division) runs here, where rounding is expected.
_ROUNDING: Final = Context(
    prec=80,
    rounding=ROUND_HALF_EVEN,
    traps=[InvalidOperation, DivisionByZero, Overflow, FloatOperation],
)

# ISO 4217 minor units, plus a few crypto assets quoted at exchange precision.
CURRENCY_PRECISION: Final[Mapping[str, int]] = MappingProxyType(
    {
        "AUD": 2,
        "BHD": 3,
        "BTC": 8,
        "CAD": 2,
        "CHF": 2,
        "CNY": 2,
        "DKK": 2,
        "EUR": 2,
        "GBP": 2,
        "HKD": 2,
        "JPY": 0,
        "KRW": 0,
        "KWD": 3,
        "NOK": 2,
        "NZD": 2,
        "SEK": 2,
        "SGD": 2,
        "USD": 2,
        "USDC": 6,
    }
)

ZERO: Final = Decimal(0)

P = ParamSpec("P")
R = TypeVar("R")


def exact(function: Callable[P, R]) -> Callable[P, R]:
    """Run ``function`` with :data:`EXACT` as the decimal context."""

    @functools.wraps(function)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with localcontext(EXACT):
            return function(*args, **kwargs)

    return wrapper


def currency_precision(currency: str) -> int:
    """Digits after the point for ``currency``; raises for an unknown code."""
    try:
        return CURRENCY_PRECISION[currency]
    except KeyError:
        raise UnknownCurrencyError(f"unknown currency {currency!r}") from None


def quantum(precision: int) -> Decimal:
    """The smallest step at ``precision`` digits: ``quantum(2) == Decimal("0.01")``."""
    assert 0 <= precision <= 2 * PRECISION_MAX + AVERAGE_COST_EXTRA_DIGITS
    return Decimal(1).scaleb(-precision, context=_ROUNDING)


def digits_after_point(value: Decimal) -> int:
    """How many digits ``value`` needs after the point (trailing zeros do not count)."""
    exponent = value.normalize(_ROUNDING).as_tuple().exponent
    assert isinstance(exponent, int), "not a finite decimal"
    return max(0, -exponent)


def check_amount(
    value: Decimal,
    precision: int,
    *,
    field: str,
    allow_zero: bool = False,
) -> Decimal:
    """``value`` at exactly ``precision`` digits, or a validation error; never rounds.

    Positive (or zero when ``allow_zero``), finite and at most :data:`AMOUNT_MAX`.
    """
    if not isinstance(value, Decimal) or not value.is_finite():
        raise InvalidAmountError(f"{field} must be a finite decimal, got {value!r}")
    if value < ZERO or (value == ZERO and not allow_zero):
        raise InvalidAmountError(f"{field} must be {'>= 0' if allow_zero else '> 0'}: {value}")
    if value > AMOUNT_MAX:
        raise InvalidAmountError(f"{field} must be at most {AMOUNT_MAX}: {value}")
    if digits_after_point(value) > precision:
        raise PrecisionExceededError(
            f"{field} {value} has more than {precision} digits after the point"
        )
    return value.quantize(quantum(precision), context=_ROUNDING)


def parse_amount(text: str, precision: int, *, field: str, allow_zero: bool = False) -> Decimal:
    """Parse a wire amount (a decimal string) and check it with :func:`check_amount`."""
    try:
        value = Decimal(text.strip())
    except (InvalidOperation, ValueError):
        raise InvalidAmountError(f"{field} is not a decimal: {text!r}") from None
    return check_amount(value, precision, field=field, allow_zero=allow_zero)


def round_half_even(value: Decimal, precision: int) -> Decimal:
    """Rule 2 and 4: round half-even to ``precision`` digits."""
    return value.quantize(quantum(precision), rounding=ROUND_HALF_EVEN, context=_ROUNDING)


def round_up(value: Decimal, precision: int) -> Decimal:
    """Rule 3: round towards +infinity to ``precision`` digits."""
    return value.quantize(quantum(precision), rounding=ROUND_CEILING, context=_ROUNDING)


def round_up_to_step(value: Decimal, step: Decimal) -> Decimal:
    """Rule 3: the smallest multiple of ``step`` that is >= ``value``."""
    assert step > ZERO
    steps = _ROUNDING.divide(value, step).to_integral_value(
        rounding=ROUND_CEILING, context=_ROUNDING
    )
    return steps * step


def divide(numerator: Decimal, denominator: Decimal, precision: int) -> Decimal:
    """Rule 4: ``numerator / denominator`` rounded half-even to ``precision`` digits."""
    assert denominator != ZERO
    quotient = _ROUNDING.divide(numerator, denominator)
    return round_half_even(quotient, precision)


def is_multiple(value: Decimal, step: Decimal) -> bool:
    """Whether ``value`` lies on the grid of ``step`` (exactly; no tolerance)."""
    assert step > ZERO
    return value.remainder_near(step, context=_ROUNDING) == ZERO
