"""A read model's query routes, declared once: what api/queries/routes.py builds them from.

Every read model is served the same way (ADR 0007): `GET /api/v1/<path>` lists it, cursor
paged by a keyset and filtered, and `GET /api/v1/<path>/{key...}` reads one row; both
for the roles named, a trader only their own rows, both able to wait for a command's
writes. What differs between read models is data, and only that is declared here: the
table and the Struct its rows become, the keyset, the key, the filters, who owns a row,
the projection waited for, and the words OpenAPI shows. Adding a read model is writing
one `ReadModel`, not another pair of handlers.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, datetime
from typing import Any, Final
from uuid import UUID

import msgspec

from api.queries.filters import Filter
from api.queries.paging import Keyset, SortOrder, UtcTime
from api.queries.reading import READERS
from api.queries.rows import Derive
from api.queries.schemas import View
from ledger.domain.user import Role

# How a key's type is written in a Litestar path ({order_id:uuid}).
PATH_TYPES: Final[Mapping[type, str]] = {UUID: "uuid", str: "str", date: "date"}
# How a sort column's value is read back from a cursor: a time must carry its offset.
CURSOR_TYPES: Final[Mapping[type, Any]] = {datetime: UtcTime, UUID: UUID, str: str, date: date}


class Doc(msgspec.Struct, frozen=True):
    """A route's OpenAPI summary and description (the roles are appended to it)."""

    summary: str
    description: str = ""


class Ownership(msgspec.Struct, frozen=True, kw_only=True):
    """Which rows a trader may see: `condition`, with `{}` for their user id.

    `through` names the projection the condition reads, when it is not the model's own:
    a `consistent_with` wait covers it too, so a trader's first order on a just-opened
    account is visible at once."""

    condition: str
    through: str | None = None


OWN_ACCOUNTS: Final = Ownership(
    condition="account_id IN (SELECT account_id FROM read.accounts WHERE user_id = {})",
    through="accounts",
)


class Children(msgspec.Struct, frozen=True, kw_only=True):
    """Rows of another table shown inside one row read by its key (an order's fills):
    the first `limit` of them in `order`, as `view` Structs, under `field`."""

    field: str
    view: type[View]
    table: str
    key: str  # the parent's key column, of the same name in both tables
    order: tuple[str, ...]
    limit: int


class ReadModel(msgspec.Struct, frozen=True, kw_only=True):
    """One read model's list and get routes."""

    name: str  # of the list and of its projection: list_<name>, the cursor's list name
    one: str  # one row: get_<one>, <ONE>_NOT_FOUND
    table: str
    view: type[View]  # a row, its columns (api/queries/rows.py)
    sort: tuple[str, ...]  # the list's order, newest first unless `order=asc`: its keyset
    key: tuple[str, ...]  # the columns that name one row, its get route's path parameters
    listing: Doc
    reading: Doc
    path: str | None = None  # under /api/v1; else the name
    tag: str | None = None  # in OpenAPI; else the name
    rows: str | None = None  # the page's field of rows; else the name
    roles: tuple[Role, ...] = READERS
    ownership: Ownership | None = None  # None: every reader admitted sees every row
    filters: tuple[Filter, ...] = ()
    where: str | None = None  # a condition every row read must meet
    default_order: SortOrder = SortOrder.DESC
    derived: Mapping[str, Derive] = msgspec.field(default_factory=dict)
    detail: type[View] | None = None  # one row read by its key, if not `view`
    children: Children | None = None  # rows shown in `detail`
    missing: str | None = None  # the 404's "... not found", formatted with the key

    def __post_init__(self) -> None:
        types = self.column_types
        assert self.key, self.name
        assert self.sort, self.name
        assert all(types.get(column) in PATH_TYPES for column in self.key), self.key
        assert all(types.get(column) in CURSOR_TYPES for column in self.sort), self.sort
        # A unique tie-breaker ends the sort: the key's columns are in it.
        assert set(self.key) <= set(self.sort), (self.key, self.sort)
        assert (self.children is None) == (self.detail is None), self.name
        names = [parameter.name for item in self.filters for parameter in item.parameters()]
        assert len(names) == len(set(names)), (self.name, names)

    @property
    def column_types(self) -> dict[str, Any]:
        """The type of each column of `view`, its field's."""
        return {field.name: field.type for field in msgspec.structs.fields(self.view)}

    @property
    def keyset(self) -> Keyset:
        """How the list is ordered and its cursors read: the sort columns, with the
        view's types for them (a cursor naming another type is an INVALID_CURSOR)."""
        types = self.column_types
        key_type = tuple.__class_getitem__(tuple(CURSOR_TYPES[types[c]] for c in self.sort))
        return Keyset(name=self.name, columns=self.sort, key_type=key_type)

    @property
    def key_parameters(self) -> tuple[tuple[str, type], ...]:
        """The get route's path parameters: the key's columns and their types."""
        types = self.column_types
        return tuple((column, types[column]) for column in self.key)

    @property
    def list_path(self) -> str:
        return f"/api/v1/{self.path or self.name}"

    @property
    def get_path(self) -> str:
        return "/".join(
            [
                self.list_path,
                *(f"{{{name}:{PATH_TYPES[kind]}}}" for name, kind in self.key_parameters),
            ]
        )

    @property
    def tags(self) -> list[str]:
        return [self.tag or self.name]

    @property
    def rows_field(self) -> str:
        return self.rows or self.name

    @property
    def owned_through(self) -> str | None:
        """The projection a trader's rows are found through, if not the model's own."""
        return None if self.ownership is None else self.ownership.through

    def not_found_message(self, key: Mapping[str, Any]) -> str:
        """What was not found: `missing`, else "<one> <key>/<key>", with the key's values."""
        template = self.missing or (
            self.one.replace("_", " ") + " " + "/".join(f"{{{name}}}" for name in self.key)
        )
        return template.format(**key)
