"""The side of an order or a trade, shared by orders, positions and cash settlement."""

from __future__ import annotations

from enum import StrEnum


class Side(StrEnum):
    BUY = "buy"
    SELL = "sell"

    @property
    def sign(self) -> int:
        """+1 for a buy (the position grows), -1 for a sell."""
        return 1 if self is Side.BUY else -1
