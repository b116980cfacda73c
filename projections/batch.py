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
  with COPY into a staging table and one `UPDATE ... FROM` per set of columns touched; a
  row missing from the table changes nothing, as with a live UPDATE.

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


class Staging:
    """Temporary tables of one connection that stage rows for set-based statements: COPY
    in, then one statement that takes them out (`WITH s AS (DELETE ... RETURNING *)`)
    and applies them. Typed like the target's columns, without its constraints, so a
    change that sets only some columns leaves the others NULL; emptied at commit anyway."""

    def __init__(self) -> None:
        self._made: set[str] = set()

    async def like(self, connection: asyncpg.Connection, schema: str, table: str) -> str:
        """A staging table with the columns of schema.table."""
        return await self.made(
            connection, f"staged_{table}", f"AS SELECT * FROM {schema}.{table} WITH NO DATA"
        )

    async def made(self, connection: asyncpg.Connection, name: str, definition: str) -> str:
        """The staging table `name` (`definition` follows CREATE TEMP TABLE name)."""
        if name not in self._made:
            await connection.execute(
                f"CREATE TEMP TABLE IF NOT EXISTS {name} ON COMMIT DELETE ROWS {definition}"
                if definition.startswith("AS ")
                else f"CREATE TEMP TABLE IF NOT EXISTS {name} {definition} ON COMMIT DELETE ROWS",
                timeout=STATEMENT_TIMEOUT_S,
            )
            self._made.add(name)
        return name


Taken = tuple[dict[Any, list[Any]], dict[Any, list[Any]]]


class Rows:
    """One table's rows as a page leaves them: created ones, and changes to older ones.

    `adds` names the columns added to, each with its zero (Decimal 0 for NUMERIC, 0 for
    integers); every other column but the key's is set. `free_text` names the columns
    whose text may hold a tab, a newline or a backslash (COPY's text format escapes them);
    ids, numbers, times and enum values never do."""

    def __init__(
        self,
        table: str,
        columns: Sequence[str],
        key: str | tuple[str, ...],
        adds: Mapping[str, Any] | None = None,
        free_text: Iterable[str] = (),
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
        self.free_names = frozenset(free_text)
        self.free_text = tuple(self.columns.index(column) for column in self.free_names)
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
        self, connection: asyncpg.Connection, schema: str, staging: Staging, taken: Taken
    ) -> None:
        """Changes to older rows first (they are older than any row created), then COPY."""
        created, changed = taken
        if changed:
            await self.write_changes(connection, schema, staging, changed)
        if created:
            await copy_rows(
                connection, schema, self.table, self.columns, created.values(), self.free_text
            )

    async def write_changes(
        self,
        connection: asyncpg.Connection,
        schema: str,
        staging: Staging,
        changed: dict[Any, list[Any]],
    ) -> None:
        staged = await staging.like(connection, schema, self.table)
        groups: dict[tuple[tuple[int, ...], tuple[int, ...]], list[tuple[Any, list[Any]]]] = {}
        blank, composite = self._blank, len(self.key) > 1
        for key, row in changed.items():
            signature = (
                tuple(index for index in self.sets if row[index] is not UNSET),
                tuple(index for index in self.adds if row[index] is not blank[index]),
            )
            groups.setdefault(signature, []).append((key, row))
        for (sets, adds), items in groups.items():
            if not sets and not adds:
                continue
            names = [*self.key, *(self.columns[index] for index in (*sets, *adds))]
            rows = (
                [*(key if composite else (key,)), *(row[index] for index in (*sets, *adds))]
                for key, row in items
            )
            escaped = [number for number, name in enumerate(names) if name in self.free_names]
            await copy_rows(connection, None, staged, names, rows, escaped)
            assignments = [f"{self.columns[index]} = s.{self.columns[index]}" for index in sets]
            assignments += [
                f"{self.columns[index]} = t.{self.columns[index]} + s.{self.columns[index]}"
                for index in adds
            ]
            matches = " AND ".join(f"t.{column} = s.{column}" for column in self.key)
            await connection.execute(
                f"WITH s AS (DELETE FROM {staged} RETURNING {', '.join(names)}) "
                f"UPDATE {schema}.{self.table} t SET {', '.join(assignments)} "
                f"FROM s WHERE {matches}",
                timeout=STATEMENT_TIMEOUT_S,
            )


UpsertsTaken = dict[Any, tuple[list[Any], set[int]]]


class Upserts:
    """Rows written with INSERT ... ON CONFLICT (key) DO UPDATE, as a page leaves them.

    Each upsert gives the whole row an INSERT would write and the columns (indexes) an
    UPDATE on conflict would set. Within the page the first upsert of a key makes the
    row and later ones set their conflict columns on it; the write inserts the row and,
    if an older page wrote it already, sets every column any of the page's upserts would.

    An instance that serves page after page (a rebuild) writes the rows of keys the
    previous page did not have straight into the table with COPY, in a savepoint: a key
    is rarely upserted again pages later (a trade's two events are neighbours in the
    log), and COPY costs PostgreSQL about half of staging the row and upserting it. If an
    older page did write one of those keys, COPY fails on the primary key, the savepoint
    is rolled back and the page goes the staged way, so the rows are the live ones
    either way. A page's first write (and every write of a page made for one batch) is
    staged: nothing says what the table holds."""

    def __init__(
        self,
        table: str,
        columns: Sequence[str],
        key: tuple[str, ...],
        free_text: Iterable[str] = (),
    ) -> None:
        self.table = table
        self.columns = tuple(columns)
        self.key = key
        self.free_text = tuple(self.columns.index(column) for column in free_text)
        self.rows: UpsertsTaken = {}
        # The keys of the page written last (None before the first): one page's worth.
        self._last_keys: set[Any] | None = None
        self.copied = self.staged = 0  # rows written each way, for tests and figures

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
        self, connection: asyncpg.Connection, schema: str, staging: Staging, taken: UpsertsTaken
    ) -> None:
        last_keys, self._last_keys = self._last_keys, set(taken)
        if not taken:
            return
        if last_keys is not None:
            fresh = [row for key, (row, _) in taken.items() if key not in last_keys]
            if fresh and await self._copied(connection, schema, fresh):
                self.copied += len(fresh)
                taken = {key: value for key, value in taken.items() if key in last_keys}
        self.staged += len(taken)
        if taken:
            await self._upsert(connection, schema, staging, taken)

    async def _copied(
        self, connection: asyncpg.Connection, schema: str, rows: list[list[Any]]
    ) -> bool:
        """COPY rows of new keys into the table; False (and nothing written) if one's key
        was there already."""
        try:
            async with connection.transaction():  # a savepoint in the page's transaction
                await copy_rows(connection, schema, self.table, self.columns, rows, self.free_text)
        except asyncpg.UniqueViolationError:
            return False
        return True

    async def _upsert(
        self, connection: asyncpg.Connection, schema: str, staging: Staging, taken: UpsertsTaken
    ) -> None:
        staged = await staging.like(connection, schema, self.table)
        groups: dict[tuple[int, ...], list[list[Any]]] = {}
        for row, updated in taken.values():
            groups.setdefault(tuple(sorted(updated)), []).append(row)
        columns = ", ".join(self.columns)
        for updated, rows in groups.items():
            sets = ", ".join(
                f"{self.columns[index]} = EXCLUDED.{self.columns[index]}" for index in updated
            )
            action = f"DO UPDATE SET {sets}" if updated else "DO NOTHING"
            await copy_rows(connection, None, staged, self.columns, rows, self.free_text)
            await connection.execute(
                f"WITH s AS (DELETE FROM {staged} RETURNING {columns}) "
                f"INSERT INTO {schema}.{self.table} ({columns}) SELECT {columns} FROM s "
                f"ON CONFLICT ({', '.join(self.key)}) {action}",
                timeout=STATEMENT_TIMEOUT_S,
            )


_COPY_ESCAPES: Final = str.maketrans({"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"})


async def copy_rows(
    connection: asyncpg.Connection,
    schema: str | None,
    table: str,
    columns: Sequence[str],
    rows: Iterable[list[Any]],
    free_text: Sequence[int] = (),
) -> None:
    """COPY rows in the text format: tab between values, \\N for NULL, the values of the
    `free_text` columns escaped.

    Rows are written as text: what was read from the log as its JSON text goes in as it
    is, and what a fold computed (sums, counts, flags, times) as str() gives it, which is
    PostgreSQL's input syntax for each (True for a boolean, 2025-03-03 13:00:00+00:00 for
    a timestamptz). asyncpg's binary encoders of numeric and timestamptz cost 1-1.6 us a
    value on the machine measured: more than all the rest of the rebuild's work on it."""
    lines = []
    for row in rows:
        values = ["\\N" if value is None else value if type(value) is str else str(value)
                  for value in row]  # fmt: skip
        for index in free_text:
            if type(row[index]) is str:
                values[index] = row[index].translate(_COPY_ESCAPES)
        lines.append("\t".join(values))
    lines.append("")
    await connection.copy_to_table(
        table,
        schema_name=schema,
        source=memoryview("\n".join(lines).encode()),  # A buffer: bytes would be a path.
        columns=columns,
        format="text",
        timeout=STATEMENT_TIMEOUT_S,
    )


FoldFunction = Callable[[Any, Any, Meta], None]


class Page:
    """A projection's page fold: `FOLDS` maps event classes to functions of (page, event,
    meta) that change the page's rows; `taken` hands them over and `write` writes them.
    State that outlives a page (caches) lives on the instance too; one instance serves a
    whole rebuild, and at most one page of it is being written at a time."""

    FOLDS: Mapping[type[Event], FoldFunction] = {}
    # The fields of each event class a fold computes with (reads as Decimal or datetime);
    # every other number and time is read as its JSON text (projections/folding.py).
    COMPUTED: Mapping[type[Event], frozenset[str]] = {}

    def taken(self) -> Any:
        raise NotImplementedError

    async def write(
        self, connection: asyncpg.Connection, schema: str, staging: Staging, taken: Any
    ) -> None:
        raise NotImplementedError


def slices(items: list[Any]) -> Iterable[list[Any]]:
    for start in range(0, len(items), STATEMENT_ROWS_MAX):
        yield items[start : start + STATEMENT_ROWS_MAX]
