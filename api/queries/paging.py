"""Keyset paging and filters of the read-model lists.

Every list is ordered by a sort key and the row's id (a unique tie-breaker), newest
first unless `order=asc`. A page is the first `limit` rows after the cursor; the cursor
is the last row's key, so a row inserted or updated while a client pages never shifts
the others: no row of the list as it stands is skipped or repeated (a row whose sort key
is earlier than the cursor when it appears is simply on a page already read).

The cursor is opaque to clients: URL-safe base64 of JSON `[list, order, [key...]]`. A
cursor of another list or another order, or one that does not decode to the list's key
types, is a 400 INVALID_CURSOR. A cursor is not signed: a forged one only starts a page
somewhere else in what the caller may read anyway.

`Select` builds one statement with only the filters given, each a constant SQL fragment
with numbered parameters, so PostgreSQL plans each combination with its indexes rather
than one generic plan full of `$n IS NULL OR ...`.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping, Sequence
from datetime import date, datetime
from enum import StrEnum
from typing import Annotated, Any, Final, TypeVar

import msgspec
from litestar.openapi.spec.enums import OpenAPIFormat
from litestar.params import QueryParameter

from api.errors import ApiProblem

PAGE_LIMIT_MAX: Final = 500
PAGE_LIMIT_DEFAULT: Final = 100
CURSOR_LENGTH_MAX: Final = 512
T = TypeVar("T")


class SortOrder(StrEnum):
    DESC = "desc"
    ASC = "asc"


Limit = Annotated[
    int, QueryParameter(ge=1, le=PAGE_LIMIT_MAX, description="Rows per page, 1 to 500.")
]
Cursor = Annotated[
    str | None,
    QueryParameter(description="`next_cursor` of the previous page; absent for the first page."),
]
Order = Annotated[
    SortOrder,
    QueryParameter(description="`desc` (newest or last first, the default) or `asc`."),
]
# `from` and `to` are parsed here rather than by Litestar, whose errors would name them by
# their Python names (from_): a client must see the parameter it sent.
From = Annotated[
    str | None,
    QueryParameter(
        name="from",
        format=OpenAPIFormat.DATE_TIME,
        description="Inclusive lower bound: an ISO 8601 time with its UTC offset (Z).",
    ),
]
To = Annotated[
    str | None,
    QueryParameter(
        name="to",
        format=OpenAPIFormat.DATE_TIME,
        description="Exclusive upper bound: an ISO 8601 time with its UTC offset (Z).",
    ),
]
FromDay = Annotated[
    str | None,
    QueryParameter(
        name="from", format=OpenAPIFormat.DATE, description="First day, inclusive (YYYY-MM-DD)."
    ),
]
ToDay = Annotated[
    str | None,
    QueryParameter(
        name="to", format=OpenAPIFormat.DATE, description="Last day, exclusive (YYYY-MM-DD)."
    ),
]
BOUND_LENGTH_MAX: Final = 64


# A key's time in a cursor: with its offset, as PostgreSQL gave it (a naive one is refused).
UtcTime = Annotated[datetime, msgspec.Meta(tz=True)]


class Keyset(msgspec.Struct, frozen=True, kw_only=True):
    """How one list is ordered: its name (in its cursors), its key columns and their types."""

    name: str
    columns: tuple[str, ...]
    key_type: Any  # a tuple[...] type of the key's values, for decoding cursors

    def __post_init__(self) -> None:
        assert self.columns, self.name

    def key_of(self, row: Mapping[str, Any]) -> tuple[Any, ...]:
        """A row's key: its values of the key columns (selected under their own names)."""
        return tuple(row[column.rpartition(".")[2]] for column in self.columns)


def invalid(field: str, code: str, message: str) -> ApiProblem:
    """A 400 naming the query parameter at fault, in the shape of validation errors."""
    return ApiProblem(
        400, code, message, errors=[{"field": field, "source": "query", "message": message}]
    )


def encode_cursor(keyset: Keyset, order: SortOrder, key: tuple[Any, ...]) -> str:
    raw = msgspec.json.encode([keyset.name, order.value, list(key)])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(keyset: Keyset, order: SortOrder, cursor: str | None) -> tuple[Any, ...] | None:
    """The key a cursor names, None without one; INVALID_CURSOR if it is not this list's."""
    if cursor is None:
        return None
    message = "the cursor is not one this list gave with this order"
    if len(cursor) > CURSOR_LENGTH_MAX:
        raise invalid("cursor", "INVALID_CURSOR", message)
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        name, given_order, values = msgspec.json.decode(raw, type=tuple[str, str, list[Any]])
        key = msgspec.convert(values, type=keyset.key_type)
    except (ValueError, msgspec.DecodeError):
        raise invalid("cursor", "INVALID_CURSOR", message) from None
    # PostgreSQL text cannot hold NUL: no stored key has one.
    if name != keyset.name or given_order != order.value or any(_has_nul(value) for value in key):
        raise invalid("cursor", "INVALID_CURSOR", message)
    return tuple(key)


def _has_nul(value: Any) -> bool:
    return isinstance(value, str) and "\x00" in value


def next_cursor(
    keyset: Keyset, order: SortOrder, rows: Sequence[Mapping[str, Any]], limit: int
) -> str | None:
    """The cursor after the page's last row, or None when `rows` (limit + 1 fetched) ends
    the list."""
    if len(rows) <= limit:
        return None
    return encode_cursor(keyset, order, keyset.key_of(rows[limit - 1]))


def time_range(start: str | None, end: str | None) -> tuple[datetime | None, datetime | None]:
    """`from` and `to` as UTC-aware times, `from` before `to`; else a 400 naming the field."""
    bounds = (_parse("from", start, _time), _parse("to", end, _time))
    _check_order(*bounds)
    return bounds


def day_range(start: str | None, end: str | None) -> tuple[date | None, date | None]:
    """`from` and `to` as days, `from` before `to`; else a 400 naming the field."""
    bounds = (_parse("from", start, date.fromisoformat), _parse("to", end, date.fromisoformat))
    _check_order(*bounds)
    return bounds


def _time(text: str) -> datetime:
    value = datetime.fromisoformat(text)
    if value.utcoffset() is None:
        raise ValueError("no UTC offset")
    return value


def _parse(field: str, text: str | None, parse: Callable[[str], T]) -> T | None:
    if text is None:
        return None
    try:
        if len(text) > BOUND_LENGTH_MAX:
            raise ValueError("too long")
        return parse(text)
    except ValueError:
        raise invalid(
            field,
            "VALIDATION_ERROR",
            f"`{field}` must be an ISO 8601 "
            + ("date" if parse is date.fromisoformat else "time with its UTC offset (e.g. Z)"),
        ) from None


def _check_order(start: Any, end: Any) -> None:
    if start is not None and end is not None and start >= end:
        raise invalid("to", "VALIDATION_ERROR", "`to` must be later than `from`")


class Select:
    """One SELECT with the filters given, paged by a keyset."""

    def __init__(self, sql: str) -> None:
        self.sql = sql
        self.conditions: list[str] = []
        self.arguments: list[Any] = []

    def argument(self, value: Any) -> str:
        self.arguments.append(value)
        return f"${len(self.arguments)}"

    def where(self, template: str, *values: Any) -> Select:
        """Add a condition; `{}` in the template are replaced by the values' parameters."""
        self.conditions.append(template.format(*(self.argument(value) for value in values)))
        return self

    def where_given(self, template: str, value: Any) -> Select:
        """Add the condition only when a value was given (a filter left out is not None)."""
        if value is not None:
            self.where(template, value)
        return self

    def statement(self, extra: str = "") -> tuple[str, list[Any]]:
        where = " WHERE " + " AND ".join(self.conditions) if self.conditions else ""
        return f"{self.sql}{where}{extra}", self.arguments

    def page(
        self, keyset: Keyset, order: SortOrder, after: tuple[Any, ...] | None, limit: int
    ) -> tuple[str, list[Any]]:
        """The statement for one page: rows after the key, in order, one more than `limit`
        (that one only says whether there is a next page)."""
        assert 1 <= limit <= PAGE_LIMIT_MAX, limit
        columns = ", ".join(keyset.columns)
        descending = order is SortOrder.DESC
        if after is not None:
            assert len(after) == len(keyset.columns), (keyset.name, after)
            marks = ", ".join(self.argument(value) for value in after)
            self.conditions.append(f"({columns}) {'<' if descending else '>'} ({marks})")
        direction = " DESC" if descending else ""
        ordering = ", ".join(column + direction for column in keyset.columns)
        return self.statement(f" ORDER BY {ordering} LIMIT {self.argument(limit + 1)}")
