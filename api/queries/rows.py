"""From a read model's rows to its wire Struct, with the columns read from the Struct itself.

A view Struct (api/queries/schemas.py) is the one list of a read model's columns: each
field is the column of the same name, selected in the field's order, so a SELECT is never
written beside the Struct it fills (and cannot drift from it). A value is converted by
its field's type:
- `Amount` (NUMERIC): the decimal string exactly as stored, `None` kept where allowed;
- a list or dict (a jsonb column, which asyncpg gives as text): decoded into that type;
- anything else (ids, text, numbers, times, days): as asyncpg gives it.
A field computed from other columns (an account's total) is `derived`, with its function;
the last fields may be `omitted`, to be filled by the caller from other rows (an order's
fills).

A row becomes its Struct by position: the values are taken in field order (one C call),
the few that need it converted in place, and the Struct built from the list. Built by
keyword instead, through a dict, a list page cost about 2 µs more per row than the
hand-written constructors it replaced; by position it costs about what they did.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from operator import itemgetter, methodcaller
from typing import Any, Final, get_origin

import msgspec

from api.queries.schemas import Amount, View, optional_amount

Row = Mapping[str, Any]  # an asyncpg.Record, or any mapping of column names
Derive = Callable[[Row], Any]


# schemas.amount, format(value, "f"), without a Python frame: most values of a page are
# amounts, and this is what brings a page back to the cost of the hand-written code.
_DECIMAL_TEXT: Final = methodcaller("__format__", "f")


def _converter(field_type: Any) -> Callable[[Any], Any] | None:
    """How a column's value becomes a field of this type; None to take it as it is."""
    if field_type == Amount:
        return _DECIMAL_TEXT
    if field_type == Amount | None:
        return optional_amount
    if get_origin(field_type) in (list, dict):
        return msgspec.json.Decoder(field_type).decode
    return None


class Columns:
    """The columns of a view Struct and how a row becomes the Struct."""

    __slots__ = ("_converted", "_derived", "_take", "columns", "view")

    def __init__(
        self,
        view: type[View],
        *,
        derived: Mapping[str, Derive] | None = None,
        omitted: Iterable[str] = (),
    ) -> None:
        derived = dict(derived or {})
        every = msgspec.structs.fields(view)
        left_out = tuple(omitted)
        kept = every[: len(every) - len(left_out)]
        # Omitted fields come last: the caller appends their values.
        assert tuple(field.name for field in every[len(kept) :]) == left_out, left_out
        assert derived.keys() <= {field.name for field in kept}, (view, derived.keys())
        read = [field for field in kept if field.name not in derived]
        assert len(read) >= 2, view  # so that itemgetter gives a tuple
        self.view = view
        self.columns = tuple(field.name for field in read)
        self._take = itemgetter(*self.columns)
        # Positions in the list of columns' values, then where derived values go in.
        self._converted = tuple(
            (index, converter)
            for index, field in enumerate(read)
            if (converter := _converter(field.type)) is not None
        )
        self._derived = tuple(
            (index, derived[field.name])
            for index, field in enumerate(kept)
            if field.name in derived
        )

    def select(self, table: str) -> str:
        return f"SELECT {', '.join(self.columns)} FROM {table}"

    def values(self, row: Row) -> list[Any]:
        """The Struct's field values from a row, in field order (those omitted excepted)."""
        values = list(self._take(row))
        for index, convert in self._converted:
            values[index] = convert(values[index])
        for index, derive in self._derived:  # in ascending order of position
            values.insert(index, derive(row))
        return values

    def view_of(self, row: Row) -> View:
        return self.view(*self.values(row))
