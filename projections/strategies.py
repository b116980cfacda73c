"""Read model `strategies`: name, owner, parameters (jsonb) and whether it is active."""

from __future__ import annotations

from typing import Any, Final

import asyncpg

from ledger.domain import Event
from ledger.domain.strategy import (
    StrategyActivated,
    StrategyCreated,
    StrategyDeactivated,
    StrategyParametersChanged,
)
from projections import batch
from projections.base import EventMeta, Handlers, dispatch, execute, to_json

NAME: Final = "strategies"
TABLES: Final = ("strategies",)


async def _created(connection: asyncpg.Connection, event: StrategyCreated, meta: EventMeta) -> None:
    await execute(
        connection,
        "INSERT INTO strategies (strategy_id, name, owner_id, parameters, active, created_at, "
        "updated_at, version) VALUES ($1, $2, $3, $4::jsonb, false, $5, $5, $6)",
        event.strategy_id,
        event.name,
        event.owner_id,
        to_json(event.parameters),
        event.occurred_at,
        meta.version,
    )


async def _parameters_changed(
    connection: asyncpg.Connection, event: StrategyParametersChanged, meta: EventMeta
) -> None:
    await execute(
        connection,
        "UPDATE strategies SET parameters = $2::jsonb, updated_at = $3, version = $4 "
        "WHERE strategy_id = $1",
        meta.stream_id,
        to_json(event.parameters),
        event.occurred_at,
        meta.version,
    )


async def _set_active(
    connection: asyncpg.Connection, meta: EventMeta, event: Event, active: bool
) -> None:
    await execute(
        connection,
        "UPDATE strategies SET active = $2, updated_at = $3, version = $4 WHERE strategy_id = $1",
        meta.stream_id,
        active,
        event.occurred_at,
        meta.version,
    )


async def _activated(
    connection: asyncpg.Connection, event: StrategyActivated, meta: EventMeta
) -> None:
    await _set_active(connection, meta, event, True)


async def _deactivated(
    connection: asyncpg.Connection, event: StrategyDeactivated, meta: EventMeta
) -> None:
    await _set_active(connection, meta, event, False)


# Page fold (projections/batch.py): the same rows, each written once per page.

COLUMNS: Final = (
    "strategy_id", "name", "owner_id", "parameters", "active", "created_at", "updated_at",
    "version",
)  # fmt: skip
_PARAMETERS, _ACTIVE, _UPDATED_AT, _VERSION = (
    COLUMNS.index(name) for name in ("parameters", "active", "updated_at", "version")
)


class Page(batch.Page):
    def __init__(self) -> None:
        self.strategies = batch.Rows(
            "strategies", COLUMNS, "strategy_id", free_text=("name", "parameters")
        )

    def taken(self) -> Any:
        return self.strategies.take()

    async def write(
        self, connection: asyncpg.Connection, schema: str, staging: batch.Staging, taken: Any
    ) -> None:
        await self.strategies.write(connection, schema, staging, taken)


def _fold_created(page: Page, event: StrategyCreated, meta: batch.Meta) -> None:
    page.strategies.insert(
        event.strategy_id,
        [event.strategy_id, event.name, event.owner_id, to_json(event.parameters), False,
         event.occurred_at, event.occurred_at, meta.version],
    )  # fmt: skip


def _changed(page: Page, event: Event, meta: batch.Meta) -> list[Any]:
    row = page.strategies.row(meta.stream_id)
    row[_UPDATED_AT] = event.occurred_at
    row[_VERSION] = meta.version
    return row


def _fold_parameters_changed(
    page: Page, event: StrategyParametersChanged, meta: batch.Meta
) -> None:
    _changed(page, event, meta)[_PARAMETERS] = to_json(event.parameters)


def _fold_activated(page: Page, event: StrategyActivated, meta: batch.Meta) -> None:
    _changed(page, event, meta)[_ACTIVE] = True


def _fold_deactivated(page: Page, event: StrategyDeactivated, meta: batch.Meta) -> None:
    _changed(page, event, meta)[_ACTIVE] = False


Page.FOLDS = {
    StrategyCreated: _fold_created,
    StrategyParametersChanged: _fold_parameters_changed,
    StrategyActivated: _fold_activated,
    StrategyDeactivated: _fold_deactivated,
}

HANDLERS: Final[Handlers] = {
    StrategyCreated: _created,
    StrategyParametersChanged: _parameters_changed,
    StrategyActivated: _activated,
    StrategyDeactivated: _deactivated,
}


async def apply(connection: asyncpg.Connection, event: Event, meta: EventMeta) -> None:
    await dispatch(HANDLERS, connection, event, meta)
