"""The list and get routes of a read model, built from its declaration (api/queries/model.py).

A handler's signature is what Litestar parses, validates and documents; here it is made
from the declaration rather than written out per read model: the `Reader` dependency
(roles, ownership and the `consistent_with` wait, api/queries/reading.py), the paging
parameters, each filter's parameters, and the page Struct as the return type. That is
the way Litestar's own advanced-alchemy builds its filter dependencies (an
`inspect.Signature` set on a function): Litestar reads `__signature__` and
`__annotations__`, so the route, its validation and its OpenAPI are those of a written
handler with the same parameters. The functions are named as the written handlers were
(list_orders, get_order), which names their OpenAPI operations.

Statements are built as before, condition by condition in the same order (the model's
own condition, the trader's ownership, then the filters or the key), so each holds only
the filters given and PostgreSQL plans each combination with its indexes.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Coroutine, Mapping
from typing import Annotated, Any

from litestar import get
from litestar.di import NamedDependency
from litestar.handlers import HTTPRouteHandler
from litestar.params import PathParameter

from api.queries.filters import Condition, keyword
from api.queries.model import Children, ReadModel
from api.queries.paging import (
    PAGE_LIMIT_DEFAULT,
    Cursor,
    Limit,
    Order,
    Select,
    SortOrder,
    decode_cursor,
    next_cursor,
)
from api.queries.reading import Reader, not_found, query
from api.queries.rows import Columns
from api.queries.schemas import View, page_of

Handler = Callable[..., Coroutine[Any, Any, View]]


def routes(model: ReadModel) -> list[HTTPRouteHandler]:
    """The model's list route, then its get route."""
    return [list_route(model), get_route(model)]


def _handler(
    function: Handler, name: str, parameters: list[inspect.Parameter], returns: type[View]
) -> Handler:
    """`function` (which takes keyword arguments) named and typed as a written handler."""
    function.__name__ = function.__qualname__ = name
    # Litestar reads the parameters from the signature, their types from the annotations.
    function.__signature__ = inspect.Signature(parameters, return_annotation=returns)  # type: ignore[attr-defined]
    function.__annotations__ = {
        **{parameter.name: parameter.annotation for parameter in parameters},
        "return": returns,
    }
    return function


def _route(model: ReadModel, path: str, handler: Handler, *, one: bool = False) -> HTTPRouteHandler:
    """A GET route of the model: its roles, what it waits for, its words in OpenAPI."""
    doc = model.reading if one else model.listing
    return get(
        path,
        tags=model.tags,
        **query(
            *model.roles,
            projection=model.name,
            owned_through=model.owned_through,
            one=one,
            summary=doc.summary,
            description=doc.description,
        ),
    )(handler)


def _path(kind: Any) -> Any:
    """`FromPath[kind]`, made from a type held as data."""
    return Annotated[kind, PathParameter()]


def _owned(select: Select, model: ReadModel, reader: Reader) -> Select:
    """Only the caller's own rows, when the caller is a trader (reader.owner is set)."""
    if model.ownership is not None:
        select.where_given(model.ownership.condition, reader.owner)
    return select


class _ChildRows:
    """The statement reading a parent's children (Children), built once."""

    def __init__(self, children: Children) -> None:
        self.children = children
        self.columns = Columns(children.view)
        self.sql = (
            f"{self.columns.select(children.table)} WHERE {children.key} = $1 "
            f"ORDER BY {', '.join(children.order)} LIMIT $2"
        )

    async def read(self, reader: Reader, parent: Mapping[str, Any]) -> list[View]:
        """The first `limit` children of the parent with this key, in order."""
        found = await reader.rows((self.sql, [parent[self.children.key], self.children.limit]))
        return [self.columns.view_of(row) for row in found]


def list_route(model: ReadModel) -> HTTPRouteHandler:
    """`GET /api/v1/<path>`: one page of rows after the cursor, filtered, in order."""
    columns = Columns(model.view, derived=model.derived)
    sql = columns.select(model.table)
    page = page_of(model.view, model.rows_field)
    view, values_of = model.view, columns.values
    keyset = model.keyset

    async def list_rows(
        *, reader: Reader, cursor: str | None, limit: int, order: SortOrder, **given: Any
    ) -> View:
        # Filters first: a bad `from` is named before a bad cursor.
        conditions: list[Condition] = [
            condition for item in model.filters for condition in item.conditions(given)
        ]
        after = decode_cursor(keyset, order, cursor)
        select = Select(sql)
        if model.where is not None:
            select.where(model.where)
        _owned(select, model, reader)
        for template, values in conditions:
            select.where(template, *values)
        rows = await reader.rows(select.page(keyset, order, after, limit))
        # Not columns.view_of: one call less per row, on the path most read.
        return page(
            [view(*values_of(row)) for row in rows[:limit]],
            next_cursor(keyset, order, rows, limit),
        )

    parameters = [
        keyword("reader", NamedDependency[Reader]),
        keyword("cursor", Cursor, None),
        keyword("limit", Limit, PAGE_LIMIT_DEFAULT),
        keyword("order", Order, model.default_order),
        *(parameter for item in model.filters for parameter in item.parameters()),
    ]
    return _route(
        model, model.list_path, _handler(list_rows, f"list_{model.name}", parameters, page)
    )


def get_route(model: ReadModel) -> HTTPRouteHandler:
    """`GET /api/v1/<path>/{key...}`: one row, 404 if it is missing or not the caller's."""
    children = model.children
    detail = model.detail or model.view
    omitted = () if children is None else (children.field,)
    columns = Columns(detail, derived=model.derived, omitted=omitted)
    # The detail is the listed view with more: the same columns.
    assert columns.columns == Columns(model.view, derived=model.derived).columns, model.name
    sql = columns.select(model.table)
    code = f"{model.one.upper()}_NOT_FOUND"
    child_rows = None if children is None else _ChildRows(children)

    async def get_row(*, reader: Reader, **key: Any) -> View:
        # PostgreSQL text cannot hold NUL, so no row has such a key (and asyncpg would
        # refuse to send it); the message shows it quoted.
        if any(isinstance(value, str) and "\x00" in value for value in key.values()):
            quoted = {
                name: repr(value) if isinstance(value, str) else value
                for name, value in key.items()
            }
            raise not_found(code, model.not_found_message(quoted))
        select = Select(sql)
        if model.where is not None:
            select.where(model.where)
        for name in model.key:
            select.where(f"{name} = {{}}", key[name])
        row = await reader.row(_owned(select, model, reader).statement())
        if row is None:
            raise not_found(code, model.not_found_message(key))
        values = columns.values(row)
        if child_rows is not None:
            values.append(await child_rows.read(reader, key))
        return detail(*values)

    parameters = [
        keyword("reader", NamedDependency[Reader]),
        *(keyword(name, _path(kind)) for name, kind in model.key_parameters),
    ]
    handler = _handler(get_row, f"get_{model.one}", parameters, detail)
    return _route(model, model.get_path, handler, one=True)
