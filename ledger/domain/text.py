"""Bounded text fields: names, reasons, labels. Every string the domain stores has a limit."""

from __future__ import annotations

import unicodedata
from typing import Final

from ledger.domain.errors import InvalidTextError

NAME_LENGTH_MAX: Final = 100
REASON_LENGTH_MAX: Final = 500
LABEL_LENGTH_MAX: Final = 64


def check_text(value: str, *, field: str, length_max: int, allow_empty: bool = False) -> str:
    """``value`` stripped, or :class:`InvalidTextError` if empty, too long or with control chars."""
    stripped = value.strip()
    if not stripped and not allow_empty:
        raise InvalidTextError(f"{field} must not be empty")
    if len(stripped) > length_max:
        raise InvalidTextError(f"{field} must be at most {length_max} characters")
    if any(unicodedata.category(character) == "Cc" for character in stripped):
        raise InvalidTextError(f"{field} must not contain control characters")
    return stripped
