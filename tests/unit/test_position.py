"""Position at average cost: reductions and flips realise P&L; nothing is lost to rounding."""

from __future__ import annotations

from decimal import Decimal, localcontext
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.domain.money import EXACT
from ledger.domain.position import (
    PositionState,
    average_cost,
    position_stream_id,
    trade_effect,
)
from tests.unit.support import INSTRUMENT_ID, NOW, USER_ID, d


def test_position_ids_are_deterministic_per_account_and_instrument() -> None:
    assert position_stream_id(USER_ID, INSTRUMENT_ID) == position_stream_id(USER_ID, INSTRUMENT_ID)
    assert position_stream_id(USER_ID, INSTRUMENT_ID) != position_stream_id(INSTRUMENT_ID, USER_ID)


@pytest.mark.parametrize(
    ("quantity", "basis", "trade", "price", "expected"),
    [
        ("0", "0", "10", "5", ("10", "50", "0")),  # open long
        ("10", "50", "10", "7", ("10", "70", "0")),  # add
        ("20", "120", "-5", "8", ("-5", "-30", "10")),  # reduce: avg 6, sells at 8
        ("20", "120", "-20", "5", ("-20", "-120", "-20")),  # full close at a loss
        ("10", "50", "-15", "6", ("-15", "-80", "10")),  # flip: close 10 (+10), open 5 short at 6
        ("-10", "-100", "4", "8", ("4", "40", "8")),  # cover part of a short at a profit
        ("-10", "-100", "12", "9", ("12", "118", "10")),  # flip short to long
    ],
)
def test_trade_effects(
    quantity: str, basis: str, trade: str, price: str, expected: tuple[str, str, str]
) -> None:
    effect = trade_effect(d(quantity), d(basis), d(trade), d(price), notional_precision=2)
    assert effect == tuple(d(value) for value in expected)


def test_a_reduction_rounds_the_removed_basis_half_even_and_a_full_close_leaves_nothing() -> None:
    effect = trade_effect(d("3"), d("10.00"), d("-1"), d("4.00"), notional_precision=2)
    assert effect.cost_basis_change == d("-3.33")
    assert effect.realised_pnl_change == d("0.67")
    closing = trade_effect(d("2"), d("6.67"), d("-2"), d("4.00"), notional_precision=2)
    assert closing.cost_basis_change == d("-6.67")


def test_average_cost() -> None:
    position = PositionState(
        account_id=USER_ID,
        instrument_id=INSTRUMENT_ID,
        quantity=d("-3"),
        cost_basis=d("-10.00"),
        realised_pnl=d("0"),
        fees_paid=d("0"),
        reservations=(),
        trade_count=1,
        opened_at=NOW,
        updated_at=NOW,
    )
    assert average_cost(position, 2) == d("3.333333")


_trades = st.lists(
    st.tuples(
        st.integers(min_value=-50, max_value=50).filter(bool),
        st.integers(min_value=1, max_value=20_000),
    ),
    min_size=1,
    max_size=40,
)


@given(_trades)
def test_average_cost_accounting_against_an_exact_reference(trades: list[tuple[int, int]]) -> None:
    """Exact conservation always; an exact-fraction reference within rounding, exactly when flat."""
    quantity = basis = realised = Decimal(0)
    ref_quantity, ref_basis, ref_realised = 0, Fraction(0), Fraction(0)
    cash_flow = Decimal(0)
    reductions = 0
    for signed, cents in trades:
        price = Decimal(cents).scaleb(-2)
        effect = trade_effect(quantity, basis, Decimal(signed), price, notional_precision=2)
        with localcontext(EXACT):
            quantity += effect.quantity_change
            basis += effect.cost_basis_change
            realised += effect.realised_pnl_change
            cash_flow -= signed * price
        # Reference: average cost in exact fractions.
        exact_price = Fraction(cents, 100)
        if ref_quantity == 0 or (ref_quantity > 0) == (signed > 0):
            ref_basis += signed * exact_price
        else:
            reductions += 1
            closed = min(abs(signed), abs(ref_quantity))
            removed = ref_basis * closed / abs(ref_quantity)
            ref_realised += (1 if ref_quantity > 0 else -1) * closed * exact_price - removed
            ref_basis -= removed
            opened = abs(signed) - closed
            if opened:
                ref_basis = (1 if signed > 0 else -1) * opened * exact_price
        ref_quantity += signed
        assert quantity == ref_quantity
        assert realised - basis == cash_flow
        assert abs(Fraction(realised) - ref_realised) <= Fraction(reductions, 200)
        if quantity == 0:
            assert basis == 0
            assert Fraction(realised) == ref_realised
