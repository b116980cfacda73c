"""Read model `strategies`: name, owner, parameters (jsonb) and whether it is active."""

from __future__ import annotations

from typing import Final

import asyncpg

from ledger.domain import Event
from ledger.domain.strategy import (
    StrategyActivated,
    StrategyCreated,
    StrategyDeactivated,
    StrategyParametersChanged,
)
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


HANDLERS: Final[Handlers] = {
    StrategyCreated: _created,
    StrategyParametersChanged: _parameters_changed,
    StrategyActivated: _activated,
    StrategyDeactivated: _deactivated,
}


async def apply(connection: asyncpg.Connection, event: Event, meta: EventMeta) -> None:
    await dispatch(HANDLERS, connection, event, meta)
