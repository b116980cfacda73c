"""Money: decimals checked, never rounded on input; the explicit rounding rules."""

from __future__ import annotations

from decimal import Decimal, FloatOperation, Inexact, localcontext

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.domain.errors import InvalidAmountError, PrecisionExceededError, UnknownCurrencyError
from ledger.domain.money import (
    AMOUNT_MAX,
    EXACT,
    check_amount,
    currency_precision,
    digits_after_point,
    divide,
    exact,
    is_multiple,
    parse_amount,
    round_half_even,
    round_up,
    round_up_to_step,
)


def test_an_amount_within_precision_is_stored_at_exactly_that_precision() -> None:
    assert str(check_amount(Decimal("1.5"), 2, field="amount")) == "1.50"
    assert str(check_amount(Decimal("1.500"), 2, field="amount")) == "1.50"
    assert str(check_amount(Decimal("100"), 0, field="amount")) == "100"


@pytest.mark.parametrize("text", ["1.505", "0.001", "1e-3"])
def test_more_digits_than_the_precision_is_an_error_never_rounded(text: str) -> None:
    with pytest.raises(PrecisionExceededError):
        check_amount(Decimal(text), 2, field="amount")


@pytest.mark.parametrize("text", ["0", "-1", "NaN", "Infinity", "-Infinity", "1e16"])
def test_zero_negative_non_finite_and_huge_amounts_are_invalid(text: str) -> None:
    with pytest.raises(InvalidAmountError):
        check_amount(Decimal(text), 2, field="amount")


def test_zero_is_accepted_when_allowed() -> None:
    assert check_amount(Decimal("0"), 2, field="fee", allow_zero=True) == 0
    with pytest.raises(InvalidAmountError):
        check_amount(Decimal("-0.01"), 2, field="fee", allow_zero=True)


def test_a_float_is_not_an_amount() -> None:
    with pytest.raises(InvalidAmountError):
        check_amount(1.5, 2, field="amount")  # type: ignore[arg-type]


def test_parse_amount_reads_wire_strings() -> None:
    assert parse_amount(" 12.30 ", 2, field="amount") == Decimal("12.30")
    with pytest.raises(InvalidAmountError):
        parse_amount("twelve", 2, field="amount")
    with pytest.raises(PrecisionExceededError):
        parse_amount("12.345", 2, field="amount")


def test_currency_precision_comes_from_one_table() -> None:
    assert currency_precision("USD") == 2
    assert currency_precision("JPY") == 0
    with pytest.raises(UnknownCurrencyError):
        currency_precision("XXX")


def test_rounding_rules() -> None:
    assert round_half_even(Decimal("0.125"), 2) == Decimal("0.12")
    assert round_half_even(Decimal("0.135"), 2) == Decimal("0.14")
    assert round_up(Decimal("0.121"), 2) == Decimal("0.13")
    assert round_up(Decimal("0.12"), 2) == Decimal("0.12")
    assert round_up_to_step(Decimal("10.01"), Decimal("0.05")) == Decimal("10.05")
    assert round_up_to_step(Decimal("10.05"), Decimal("0.05")) == Decimal("10.05")
    assert divide(Decimal("10"), Decimal("3"), 4) == Decimal("3.3333")
    assert is_multiple(Decimal("10.05"), Decimal("0.05"))
    assert not is_multiple(Decimal("10.04"), Decimal("0.05"))
    assert digits_after_point(Decimal("1.2300")) == 2


def test_exact_context_refuses_silent_rounding_and_floats() -> None:
    @exact
    def third() -> Decimal:
        return Decimal(1) / Decimal(3)

    @exact
    def mixed() -> bool:
        return Decimal(1) < 1.5  # type: ignore[operator]

    with pytest.raises(Inexact):
        third()
    with pytest.raises(FloatOperation):
        mixed()


@given(
    st.decimals(min_value=Decimal("0.01"), max_value=AMOUNT_MAX, places=2, allow_nan=False),
    st.integers(min_value=2, max_value=8),
)
def test_an_accepted_amount_keeps_its_value(value: Decimal, precision: int) -> None:
    assert check_amount(value, precision, field="amount") == value


@given(
    st.decimals(min_value=Decimal("-1e6"), max_value=Decimal("1e6"), places=6, allow_nan=False),
    st.integers(min_value=0, max_value=4),
)
def test_rounding_moves_by_less_than_one_step(value: Decimal, precision: int) -> None:
    step = Decimal(1).scaleb(-precision)
    with localcontext(EXACT):
        assert abs(round_half_even(value, precision) - value) <= step / 2
        assert Decimal(0) <= round_up(value, precision) - value < step
