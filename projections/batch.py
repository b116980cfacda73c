"""Folding a page of the log in memory, for rebuilds: each row touched is written once.

The live path (engine.apply_batch) runs one statement per event, which is what a small
JetStream batch needs. A rebuild reads tens of thousands of events at a time, so each
projection also has a page fold (`<model>.Page`): its events change rows held in
memory, and `write` writes each row once.

A table's columns are keys, columns SET (the last value wins) and columns ADDED TO
(amounts summed); no column is both. `Rows.row(key)` gives the list to change:

- a row the page created (`insert`), complete, with every later change folded in: it goes
  in with COPY (a duplicate key fails, as the live INSERT would);
- else the page's change to a row of an earlier page: set columns start UNSET, added ones
  at zero, so the same fold code records "set this" and "add that". Changes are written
  with one `UPDATE ... FROM unnest(...)` per set of columns touched; a row missing from
  the table changes nothing, as with a live UPDATE.

`Upserts` hold rows written with INSERT ... ON CONFLICT (trades).

Sums of NUMERIC are exact and their scale is the largest of their terms', in PostgreSQL
and in Python's decimal under exact(), so adding a page's amounts first and the sum to
the row gives the row the live path gives, digit for digit; products go through
`product`, which scales as NUMERIC does. Folds index rows by position (the module's
COLUMNS): a rebuild folds a million events, and dicts of column names per event cost
more than reading the log. tests/integration/test_projections_rebuild.py holds the page
folds to the live path, row for row and digit for digit, on every kind of event.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from decimal import Context, Decimal, localcontext
from typing import Any, Final, Protocol

import asyncpg

from ledger.domain import Event
from ledger.domain.money import EXACT
from projections.base import STATEMENT_TIMEOUT_S, ReadModelError

# Bounds a statement's arrays: a page's changes are written in slices of this many rows.
STATEMENT_ROWS_MAX: Final = 20_000


class _Unset:
    __slots__ = ()

    def __repr__(self) -> str:
        return "UNSET"


UNSET: Final = _Unset()


class Meta(Protocol):
    """What a page fold needs of an event's place in the log (a logged event has it all:
    projections/folding.py). Ids are their canonical text there."""

    @property
    def sequence(self) -> int: ...

    @property
    def stream_id(self) -> str: ...

    @property
    def version(self) -> int: ...


def exact() -> AbstractContextManager[Context]:
    """The decimal context every page fold runs in (the folder enters it once per slice):
    the domain's, 80 digits, and any rounding raises, so every sum here is exact."""
    return localcontext(EXACT)


def product(left: Decimal, right: Decimal) -> Decimal:
    """left * right with NUMERIC's scale (the sum of the factors' scales), under exact().

    A Decimal may have a positive exponent ("1E+2") where NUMERIC has scale 0; scaled to
    exponent 0 first, the product's exponent is NUMERIC's scale negated."""
    return _numeric(left) * _numeric(right)


def _numeric(value: Decimal) -> Decimal:
    exponent = value.as_tuple().exponent
    return value if not isinstance(exponent, int) or exponent <= 0 else value.quantize(1)


class ColumnTypes:
    """Each table's column types as the catalog has them, for unnest's array casts."""

    def __init__(self) -> None:
        self._types: dict[str, dict[str, str]] = {}

    async def of(self, connection: asyncpg.Connection, schema: str, table: str) -> dict[str, str]:
        found = self._types.get(table)
        if found is None:
            rows = await connection.fetch(
                "SELECT a.attname, format_type(a.atttypid, NULL) FROM pg_attribute a "
                "WHERE a.attrelid = $1::regclass AND a.attnum > 0 AND NOT a.attisdropped",
                f"{schema}.{table}",
                timeout=STATEMENT_TIMEOUT_S,
            )
            found = self._types[table] = {row[0]: row[1] for row in rows}
        return found


Taken = tuple[dict[Any, list[Any]], dict[Any, list[Any]]]


class Rows:
    """One table's rows as a page leaves them: created ones, and changes to older ones.

    `adds` names the columns added to, each with its zero (Decimal 0 for NUMERIC, 0 for
    integers); every other column but the key's is set."""

    def __init__(
        self,
        table: str,
        columns: Sequence[str],
        key: str | tuple[str, ...],
        adds: Mapping[str, Any] | None = None,
    ) -> None:
        adds = adds or {}
        self.table = table
        self.columns = tuple(columns)
        self.key = (key,) if isinstance(key, str) else key
        assert set(self.key) | adds.keys() <= set(self.columns), table
        self.adds = tuple(self.columns.index(column) for column in adds)
        self.sets = tuple(
            index
            for index, column in enumerate(self.columns)
            if column not in adds and column not in self.key
        )
        self._blank: list[Any] = [adds.get(column, UNSET) for column in self.columns]
        self.created: dict[Any, list[Any]] = {}
        self.changed: dict[Any, list[Any]] = {}

    def insert(self, key: Any, row: list[Any]) -> None:
        """A new row, its values in COLUMNS order."""
        assert len(row) == len(self.columns), (self.table, row)
        if key in self.created:
            raise ReadModelError(f"{self.table}: {key} is created twice")
        self.created[key] = row

    def row(self, key: Any) -> list[Any]:
        """The row of `key` to change: the page's own (complete), else its change to an
        older row (set columns UNSET until set, added ones from zero)."""
        row = self.created.get(key)
        if row is None:
            row = self.changed.get(key)
            if row is None:
                row = self.changed[key] = self._blank.copy()
        return row

    def take(self) -> Taken:
        """The page's rows, handed to `write`; the next page starts empty."""
        taken = self.created, self.changed
        self.created, self.changed = {}, {}
        return taken

    async def write(
        self, connection: asyncpg.Connection, schema: str, types: ColumnTypes, taken: Taken
    ) -> None:
        """Changes to older rows first (they are older than any row created), then COPY."""
        created, changed = taken
        if changed:
            await self.write_changes(connection, schema, types, changed)
        if created:
            await connection.copy_records_to_table(
                self.table,
                schema_name=schema,
                columns=self.columns,
                records=created.values(),
                timeout=STATEMENT_TIMEOUT_S,
            )

    async def write_changes(
        self,
        connection: asyncpg.Connection,
        schema: str,
        types: ColumnTypes,
        changed: dict[Any, list[Any]],
    ) -> None:
        table_types = await types.of(connection, schema, self.table)
        groups: dict[tuple[tuple[int, ...], tuple[int, ...]], list[tuple[Any, list[Any]]]] = {}
        blank = self._blank
        for key, row in changed.items():
            signature = (
                tuple(index for index in self.sets if row[index] is not UNSET),
                tuple(index for index in self.adds if row[index] is not blank[index]),
            )
            groups.setdefault(signature, []).append((key, row))
        for (sets, adds), items in groups.items():
            if not sets and not adds:
                continue
            names = [self.columns[index] for index in (*sets, *adds)]
            sql = _update_sql(
                schema, self.table, self.key, names[: len(sets)], names[len(sets) :], table_types
            )
            for part in slices(items):
                arrays = _key_arrays(self.key, [key for key, _ in part])
                arrays += [[row[index] for _, row in part] for index in (*sets, *adds)]
                await connection.execute(sql, *arrays, timeout=STATEMENT_TIMEOUT_S)


UpsertsTaken = dict[Any, tuple[list[Any], set[int]]]


class Upserts:
    """Rows written with INSERT ... ON CONFLICT (key) DO UPDATE, as a page leaves them.

    Each upsert gives the whole row an INSERT would write and the columns (indexes) an
    UPDATE on conflict would set. Within the page the first upsert of a key makes the
    row and later ones set their conflict columns on it; the write inserts the row and,
    if an older page wrote it already, sets every column any of the page's upserts would."""

    def __init__(self, table: str, columns: Sequence[str], key: tuple[str, ...]) -> None:
        self.table = table
        self.columns = tuple(columns)
        self.key = key
        self.rows: UpsertsTaken = {}

    def upsert(self, key: Any, row: list[Any], on_conflict: tuple[int, ...]) -> None:
        found = self.rows.get(key)
        if found is None:
            self.rows[key] = (row, set(on_conflict))
            return
        kept, updated = found
        for index in on_conflict:
            kept[index] = row[index]
        updated.update(on_conflict)

    def take(self) -> UpsertsTaken:
        taken, self.rows = self.rows, {}
        return taken

    async def write(
        self, connection: asyncpg.Connection, schema: str, types: ColumnTypes, taken: UpsertsTaken
    ) -> None:
        if not taken:
            return
        table_types = await types.of(connection, schema, self.table)
        groups: dict[tuple[int, ...], list[list[Any]]] = {}
        for row, updated in taken.values():
            groups.setdefault(tuple(sorted(updated)), []).append(row)
        columns = ", ".join(self.columns)
        unnest = _unnest(self.columns, table_types)
        for updated, rows in groups.items():
            sets = ", ".join(
                f"{self.columns[index]} = EXCLUDED.{self.columns[index]}" for index in updated
            )
            action = f"DO UPDATE SET {sets}" if updated else "DO NOTHING"
            sql = (
                f"INSERT INTO {schema}.{self.table} ({columns}) SELECT * FROM {unnest} "
                f"ON CONFLICT ({', '.join(self.key)}) {action}"
            )
            for part in slices(rows):
                arrays = [list(values) for values in zip(*part, strict=True)]
                await connection.execute(sql, *arrays, timeout=STATEMENT_TIMEOUT_S)


FoldFunction = Callable[[Any, Any, Meta], None]


class Page:
    """A projection's page fold: `FOLDS` maps event classes to functions of (page, event,
    meta) that change the page's rows; `taken` hands them over and `write` writes them.
    State that outlives a page (caches) lives on the instance too; one instance serves a
    whole rebuild, and at most one page of it is being written at a time."""

    FOLDS: Mapping[type[Event], FoldFunction] = {}

    def taken(self) -> Any:
        raise NotImplementedError

    async def write(
        self, connection: asyncpg.Connection, schema: str, types: ColumnTypes, taken: Any
    ) -> None:
        raise NotImplementedError


def slices(items: list[Any]) -> Iterable[list[Any]]:
    for start in range(0, len(items), STATEMENT_ROWS_MAX):
        yield items[start : start + STATEMENT_ROWS_MAX]


def _key_arrays(key: tuple[str, ...], keys: list[Any]) -> list[list[Any]]:
    if len(key) == 1:
        return [keys]
    return [list(values) for values in zip(*keys, strict=True)]


def _unnest(columns: Sequence[str], types: Mapping[str, str]) -> str:
    arrays = ", ".join(f"${number}::{types[column]}[]" for number, column in enumerate(columns, 1))
    return f"unnest({arrays}) AS s ({', '.join(columns)})"


def _update_sql(
    schema: str,
    table: str,
    key: tuple[str, ...],
    sets: Sequence[str],
    adds: Sequence[str],
    types: Mapping[str, str],
) -> str:
    assignments = [f"{column} = s.{column}" for column in sets]
    assignments += [f"{column} = t.{column} + s.{column}" for column in adds]
    matches = " AND ".join(f"t.{column} = s.{column}" for column in key)
    return (
        f"UPDATE {schema}.{table} t SET {', '.join(assignments)} "
        f"FROM {_unnest((*key, *sets, *adds), types)} WHERE {matches}"
    )
