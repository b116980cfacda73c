"""Business rejections: typed exceptions, each with a stable ``code``.

A decision raises one of these when a command is refused; nothing is recorded
and no state changes. The API maps ``code`` to its problem+json ``code`` (and
the base classes to HTTP statuses: not found, conflict, validation). Assertions,
not these, guard against programmer errors.

Risk-check failures on an otherwise valid order are the exception to "raise and
record nothing": placement catches :class:`RiskCheckError` and records an
``OrderRejected`` event carrying its code, so the refusal is auditable.
"""

from __future__ import annotations

from typing import ClassVar


class DomainError(Exception):
    """Raised when a command is refused by the domain's rules."""

    code: ClassVar[str] = "DOMAIN_ERROR"


# Not found -----------------------------------------------------------------


class NotFoundError(DomainError):
    """Raised when a command names an aggregate that does not exist."""

    code = "NOT_FOUND"


class UserNotFoundError(NotFoundError):
    """Raised when no user has the given id."""

    code = "USER_NOT_FOUND"


class AccountNotFoundError(NotFoundError):
    """Raised when no cash account has the given id."""

    code = "ACCOUNT_NOT_FOUND"


class InstrumentNotFoundError(NotFoundError):
    """Raised when no instrument has the given id."""

    code = "INSTRUMENT_NOT_FOUND"


class StrategyNotFoundError(NotFoundError):
    """Raised when no strategy has the given id."""

    code = "STRATEGY_NOT_FOUND"


class SignalNotFoundError(NotFoundError):
    """Raised when an order cites a signal that does not exist."""

    code = "SIGNAL_NOT_FOUND"


class OrderNotFoundError(NotFoundError):
    """Raised when no order has the given id."""

    code = "ORDER_NOT_FOUND"


# Conflicts -----------------------------------------------------------------


class AlreadyExistsError(DomainError):
    """Raised when a creating command targets a stream that already has events."""

    code = "ALREADY_EXISTS"


class EmailTakenError(DomainError):
    """Raised when a user registers with an email another user already has."""

    code = "EMAIL_TAKEN"


class SymbolTakenError(DomainError):
    """Raised when an instrument is listed under a symbol another instrument has."""

    code = "SYMBOL_TAKEN"


class InvalidStateTransitionError(DomainError):
    """Raised when a command asks for a lifecycle transition the current state forbids."""

    code = "INVALID_STATE_TRANSITION"


class UserDisabledError(DomainError):
    """Raised when a command needs an enabled user and the user is disabled."""

    code = "USER_DISABLED"


class StrategyInactiveError(DomainError):
    """Raised when an inactive strategy tries to emit a signal."""

    code = "STRATEGY_INACTIVE"


class OrderNotExpirableError(DomainError):
    """Raised when an expiry is asked for a good-till-cancelled order."""

    code = "ORDER_NOT_EXPIRABLE"


# Validation ----------------------------------------------------------------


class ValidationError(DomainError):
    """Raised when a command's content is malformed, whatever the state."""

    code = "VALIDATION_ERROR"


class InvalidAmountError(ValidationError):
    """Raised when an amount is not finite, has the wrong sign or is out of range."""

    code = "INVALID_AMOUNT"


class PrecisionExceededError(ValidationError):
    """Raised when an amount has more digits than its asset's precision (never rounded)."""

    code = "PRECISION_EXCEEDED"


class UnknownCurrencyError(ValidationError):
    """Raised when a currency code is not in the domain's currency table."""

    code = "UNKNOWN_CURRENCY"


class CurrencyMismatchError(ValidationError):
    """Raised when an order's account and instrument are in different currencies."""

    code = "CURRENCY_MISMATCH"


class TickSizeViolationError(ValidationError):
    """Raised when a price is not a multiple of the instrument's tick size."""

    code = "TICK_SIZE_VIOLATION"


class LotSizeViolationError(ValidationError):
    """Raised when a quantity is not a multiple of the instrument's lot size."""

    code = "LOT_SIZE_VIOLATION"


class InvalidEmailError(ValidationError):
    """Raised when an email address is not of the form local@domain.tld."""

    code = "INVALID_EMAIL"


class InvalidPasswordHashError(ValidationError):
    """Raised when a password hash is not an argon2id PHC string (a password, perhaps)."""

    code = "INVALID_PASSWORD_HASH"


class InvalidTextError(ValidationError):
    """Raised when a name, symbol, reason or label is empty, too long or malformed."""

    code = "INVALID_TEXT"


class InvalidInstrumentError(ValidationError):
    """Raised when an instrument's tick, lot and precisions do not agree."""

    code = "INVALID_INSTRUMENT"


class InvalidParametersError(ValidationError):
    """Raised when strategy parameters or signal indicators break their limits."""

    code = "INVALID_PARAMETERS"


class InvalidSignalError(ValidationError):
    """Raised when a signal's strength is outside 0..1 or its reasons break their limits."""

    code = "INVALID_SIGNAL"


class InvalidOrderError(ValidationError):
    """Raised when an order's prices do not fit its type or its time in force."""

    code = "INVALID_ORDER"


class SignalMismatchError(ValidationError):
    """Raised when an order cites a signal for another instrument or another direction."""

    code = "SIGNAL_MISMATCH"


class ReferencePriceRequiredError(ValidationError):
    """Raised when a market order is placed without a reference price to collar it."""

    code = "REFERENCE_PRICE_REQUIRED"


class InvalidTimestampError(ValidationError):
    """Raised when a reported time is naive or too far in the future."""

    code = "INVALID_TIMESTAMP"


class InvalidFillError(ValidationError):
    """Raised when a fill's id or venue is empty or too long."""

    code = "INVALID_FILL"


class OverfillError(ValidationError):
    """Raised when a fill's quantity exceeds the order's open quantity."""

    code = "OVERFILL"


class FillOrKillViolationError(ValidationError):
    """Raised when a fill-or-kill order is filled for less than its whole quantity."""

    code = "FILL_OR_KILL_VIOLATION"


class PriceOutsideLimitError(ValidationError):
    """Raised when a fill's price is worse than the order's limit (or collar, for buys)."""

    code = "PRICE_OUTSIDE_LIMIT"


class FillLimitExceededError(ValidationError):
    """Raised when an order already has the maximum number of fills."""

    code = "FILL_LIMIT_EXCEEDED"


# Risk ----------------------------------------------------------------------


class RiskCheckError(DomainError):
    """Raised when a pre-trade risk check or a cash movement would break a limit."""

    code = "RISK_CHECK_FAILED"


class InsufficientFundsError(RiskCheckError):
    """Raised when available cash does not cover a withdrawal, fee, hold or settlement."""

    code = "INSUFFICIENT_FUNDS"


class InsufficientPositionError(RiskCheckError):
    """Raised when a sell exceeds the unreserved position and shorting is not allowed."""

    code = "INSUFFICIENT_POSITION"


class InstrumentNotTradableError(RiskCheckError):
    """Raised when an order is placed on a halted or delisted instrument."""

    code = "INSTRUMENT_NOT_TRADABLE"


class TooManyOpenOrdersError(RiskCheckError):
    """Raised when an account (buys) or a position (sells) has as many open orders as it may."""

    code = "TOO_MANY_OPEN_ORDERS"


class MaxNotionalExceededError(RiskCheckError):
    """Raised when an order's notional exceeds the account's maximum order notional."""

    code = "MAX_NOTIONAL_EXCEEDED"
