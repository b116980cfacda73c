"""The filters a read-model list takes: each declares its query parameters and the SQL
conditions a request's values of them add.

A filter is data in a read model's declaration (api/queries/model.py), not code in a
handler: its `parameters` become the list handler's own (so Litestar parses, validates
and documents them exactly as if written out), and `conditions` turns the parsed values
into `Select.where` templates, `{}` standing for each value's `$n`. A filter left out adds
nothing, so each statement holds only the filters given (ADR 0007).

`conditions` runs before the cursor is decoded, as the hand-written handlers did, so a
request with both a bad `from` and a bad cursor names `from`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from enum import Enum
from typing import Annotated, Any, Final, Protocol
from uuid import UUID

import msgspec
from litestar.params import QueryParameter

from api.queries.paging import From, FromDay, To, ToDay, day_range, time_range
from api.queries.reading import instrument_of

# A condition: a template with `{}` for each value, and the values.
Condition = tuple[str, tuple[Any, ...]]


class Filter(Protocol):
    """Query parameters of a list and the conditions their values add."""

    def parameters(self) -> tuple[inspect.Parameter, ...]:
        """The handler parameters (keyword-only, defaulting to None) it adds."""
        ...

    def conditions(self, given: Mapping[str, Any]) -> list[Condition]:
        """The conditions for the values given, by parameter name; a 400 if they are
        invalid together."""
        ...


def keyword(
    name: str, annotation: Any, default: Any = inspect.Parameter.empty
) -> inspect.Parameter:
    """A handler parameter (Litestar passes them all by name)."""
    return inspect.Parameter(
        name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation
    )


def optional(name: str, annotation: Any) -> inspect.Parameter:
    """A handler parameter for a query parameter that may be left out (None)."""
    return keyword(name, annotation, None)


def optional_query(kind: Any, parameter: QueryParameter | None = None) -> Any:
    """`Annotated[kind | None, parameter]`, the annotation of a written query parameter
    (`FromQuery[kind | None]` without constraints), made from a type held as data."""
    return Annotated[kind | None, parameter or QueryParameter()]


class Equals(msgspec.Struct, frozen=True, kw_only=True):
    """`column = value` when the parameter (of type `kind`, with the constraints of
    `parameter`) is given. An enum is compared by its value; `convert` maps what the
    client names to what the column holds (a symbol to its instrument's id)."""

    name: str
    kind: Any
    parameter: QueryParameter | None = None
    column: str | None = None  # when it is not the parameter's name
    convert: Callable[[Any], Any] | None = None

    def parameters(self) -> tuple[inspect.Parameter, ...]:
        return (optional(self.name, optional_query(self.kind, self.parameter)),)

    def conditions(self, given: Mapping[str, Any]) -> list[Condition]:
        value = given[self.name]
        if value is None:
            return []
        if self.convert is not None:
            value = self.convert(value)
        elif isinstance(value, Enum):
            value = value.value
        return [(f"{self.column or self.name} = {{}}", (value,))]


class Switch(msgspec.Struct, frozen=True):
    """A boolean parameter that picks one of two conditions (no values of its own)."""

    name: str
    when_true: str
    when_false: str

    def parameters(self) -> tuple[inspect.Parameter, ...]:
        return (optional(self.name, optional_query(bool)),)

    def conditions(self, given: Mapping[str, Any]) -> list[Condition]:
        value = given[self.name]
        if value is None:
            return []
        return [(self.when_true if value else self.when_false, ())]


class Range(msgspec.Struct, frozen=True):
    """`from` (inclusive) and `to` (exclusive) on a column of times, or of days.

    Both are parsed here, together, rather than by Litestar (paging.time_range): errors
    name the parameter the client sent (`from`, not `from_`), and `from` must be before
    `to`."""

    column: str
    days: bool = False

    def parameters(self) -> tuple[inspect.Parameter, ...]:
        if self.days:
            return (optional("from_", FromDay), optional("to", ToDay))
        return (optional("from_", From), optional("to", To))

    def conditions(self, given: Mapping[str, Any]) -> list[Condition]:
        bounds = day_range if self.days else time_range
        start, end = bounds(given["from_"], given["to"])
        conditions: list[Condition] = []
        if start is not None:
            conditions.append((f"{self.column} >= {{}}", (start,)))
        if end is not None:
            conditions.append((f"{self.column} < {{}}", (end,)))
        return conditions


def equals(name: str, kind: Any) -> Equals:
    """`name = value`, for a parameter of that name and type."""
    return Equals(name=name, kind=kind)


# The filters several lists share.
ACCOUNT: Final = equals("account_id", UUID)
INSTRUMENT: Final = equals("instrument_id", UUID)
# An instrument's id derives from its symbol, so a symbol filter needs no join.
SYMBOL: Final = Equals(
    name="symbol",
    kind=str,
    parameter=QueryParameter(min_length=1, max_length=32),
    column="instrument_id",
    convert=instrument_of,
)
CURRENCY: Final = Equals(
    name="currency", kind=str, parameter=QueryParameter(pattern=r"^[A-Z]{3,4}$")
)
