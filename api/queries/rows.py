"""From a read model's rows to its wire Struct, with the columns read from the Struct itself.

A view Struct (api/queries/schemas.py) is the one list of a read model's columns: each
field is the column of the same name, selected in the field's order, so a SELECT is never
written beside the Struct it fills (and cannot drift from it). A value is converted by
its field's type:
- `Amount` (NUMERIC): the decimal string exactly as stored, `None` kept where allowed;
- a list or dict (a jsonb column, which asyncpg gives as text): decoded into that type;
- anything else (ids, text, numbers, times, days): as asyncpg gives it.
A field computed from other columns (an account's total) is `derived`, with its function;
a field filled from other rows (an order's fills) is `omitted` and set by the caller.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, get_origin

import msgspec

from api.queries.schemas import Amount, View, amount, optional_amount

Row = Mapping[str, Any]  # an asyncpg.Record, or any mapping of column names
Derive = Callable[[Row], Any]


def _converter(field_type: Any) -> Callable[[Any], Any] | None:
    """How a column's value becomes a field of this type; None to take it as it is."""
    if field_type == Amount:
        return amount
    if field_type == Amount | None:
        return optional_amount
    if get_origin(field_type) in (list, dict):
        return msgspec.json.Decoder(field_type).decode
    return None


class Columns:
    """The columns of a view Struct and how a row becomes the Struct."""

    __slots__ = ("columns", "converted", "derived", "plain", "view")

    def __init__(
        self,
        view: type[View],
        *,
        derived: Mapping[str, Derive] | None = None,
        omitted: Iterable[str] = (),
    ) -> None:
        derived = dict(derived or {})
        left_out = set(omitted)
        fields = [field for field in msgspec.structs.fields(view) if field.name not in left_out]
        names = {field.name for field in fields}
        assert left_out <= {field.name for field in msgspec.structs.fields(view)}, left_out
        assert derived.keys() <= names, (view, derived.keys())
        self.view = view
        self.derived = tuple(derived.items())
        read = [field for field in fields if field.name not in derived]
        self.columns = tuple(field.name for field in read)
        # Split once, so that converting a row does no per-field test.
        self.plain = tuple(field.name for field in read if _converter(field.type) is None)
        self.converted = tuple(
            (field.name, converter)
            for field in read
            if (converter := _converter(field.type)) is not None
        )

    def select(self, table: str) -> str:
        return f"SELECT {', '.join(self.columns)} FROM {table}"

    def fields(self, row: Row) -> dict[str, Any]:
        """The Struct's fields from a row (those omitted excepted)."""
        values = {name: row[name] for name in self.plain}
        for name, convert in self.converted:
            values[name] = convert(row[name])
        for name, derive in self.derived:
            values[name] = derive(row)
        return values

    def view_of(self, row: Row) -> View:
        return self.view(**self.fields(row))
