"""Strategy aggregate: a named set of parameters that, while active, may emit signals.

A strategy is created inactive and is activated and deactivated explicitly.
Parameters are a flat, bounded mapping of names to strings, integers, booleans
or null; decimal parameters travel as strings so that no float slips in.
Replacing the parameters with equal ones records nothing.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from datetime import datetime
from functools import singledispatch
from typing import Final
from uuid import UUID

import msgspec

from ledger.domain.base import Command, Event, assert_utc
from ledger.domain.errors import (
    AlreadyExistsError,
    InvalidParametersError,
    InvalidStateTransitionError,
    StrategyNotFoundError,
)
from ledger.domain.text import NAME_LENGTH_MAX, check_text

STREAM_TYPE: Final = "strategy"
PARAMETER_COUNT_MAX: Final = 64
PARAMETER_VALUE_LENGTH_MAX: Final = 256
_PARAMETER_NAME: Final = re.compile(r"[a-z][a-z0-9_]{0,63}")

ParameterValue = str | int | bool | None
Parameters = dict[str, ParameterValue]


# Events ---------------------------------------------------------------------


class StrategyCreated(Event, frozen=True, kw_only=True):
    strategy_id: UUID
    name: str
    owner_id: UUID
    parameters: Parameters


class StrategyParametersChanged(Event, frozen=True, kw_only=True):
    parameters: Parameters


class StrategyActivated(Event, frozen=True, kw_only=True):
    pass


class StrategyDeactivated(Event, frozen=True, kw_only=True):
    pass


# Commands -------------------------------------------------------------------


class CreateStrategy(Command, frozen=True, kw_only=True):
    strategy_id: UUID
    name: str
    owner_id: UUID
    parameters: Parameters = msgspec.field(default_factory=dict)


class ChangeStrategyParameters(Command, frozen=True, kw_only=True):
    strategy_id: UUID
    parameters: Parameters


class ActivateStrategy(Command, frozen=True, kw_only=True):
    strategy_id: UUID


class DeactivateStrategy(Command, frozen=True, kw_only=True):
    strategy_id: UUID


# State ----------------------------------------------------------------------


class StrategyState(msgspec.Struct, frozen=True, kw_only=True):
    strategy_id: UUID
    name: str
    owner_id: UUID
    parameters: Parameters
    active: bool
    created_at: datetime
    updated_at: datetime


def check_parameters(parameters: Mapping[str, ParameterValue]) -> Parameters:
    """A sorted copy of ``parameters``, or :class:`InvalidParametersError` if a limit is broken."""
    if len(parameters) > PARAMETER_COUNT_MAX:
        raise InvalidParametersError(f"at most {PARAMETER_COUNT_MAX} parameters")
    for name, value in parameters.items():
        if not _PARAMETER_NAME.fullmatch(name):
            raise InvalidParametersError(f"parameter name {name!r} must match [a-z][a-z0-9_]*")
        if isinstance(value, float):
            raise InvalidParametersError(f"parameter {name} is a float; send decimals as strings")
        if isinstance(value, str) and len(value) > PARAMETER_VALUE_LENGTH_MAX:
            raise InvalidParametersError(
                f"parameter {name} is longer than {PARAMETER_VALUE_LENGTH_MAX}"
            )
    return dict(sorted(parameters.items()))


def _existing(state: StrategyState | None, strategy_id: UUID) -> StrategyState:
    if state is None:
        raise StrategyNotFoundError(f"strategy {strategy_id} does not exist")
    assert state.strategy_id == strategy_id, "handler loaded the wrong stream"
    return state


# Decisions ------------------------------------------------------------------


def decide_create_strategy(
    state: StrategyState | None, command: CreateStrategy, *, now: datetime
) -> list[Event]:
    assert_utc(now)
    if state is not None:
        raise AlreadyExistsError(f"strategy {command.strategy_id} already exists")
    return [
        StrategyCreated(
            occurred_at=now,
            strategy_id=command.strategy_id,
            name=check_text(command.name, field="name", length_max=NAME_LENGTH_MAX),
            owner_id=command.owner_id,
            parameters=check_parameters(command.parameters),
        )
    ]


def decide_change_strategy_parameters(
    state: StrategyState | None, command: ChangeStrategyParameters, *, now: datetime
) -> list[Event]:
    assert_utc(now)
    strategy = _existing(state, command.strategy_id)
    parameters = check_parameters(command.parameters)
    if parameters == strategy.parameters:
        return []
    return [StrategyParametersChanged(occurred_at=now, parameters=parameters)]


def decide_activate_strategy(
    state: StrategyState | None, command: ActivateStrategy, *, now: datetime
) -> list[Event]:
    assert_utc(now)
    strategy = _existing(state, command.strategy_id)
    if strategy.active:
        raise InvalidStateTransitionError(f"strategy {command.strategy_id} is already active")
    return [StrategyActivated(occurred_at=now)]


def decide_deactivate_strategy(
    state: StrategyState | None, command: DeactivateStrategy, *, now: datetime
) -> list[Event]:
    assert_utc(now)
    strategy = _existing(state, command.strategy_id)
    if not strategy.active:
        raise InvalidStateTransitionError(f"strategy {command.strategy_id} is already inactive")
    return [StrategyDeactivated(occurred_at=now)]


# Evolution ------------------------------------------------------------------


@singledispatch
def _apply(event: Event, state: StrategyState | None) -> StrategyState:
    raise AssertionError(f"{type(event).__name__} does not belong to a strategy stream")


@_apply.register
def _(event: StrategyCreated, state: StrategyState | None) -> StrategyState:
    assert state is None, "a strategy is created once"
    return StrategyState(
        strategy_id=event.strategy_id,
        name=event.name,
        owner_id=event.owner_id,
        parameters=dict(event.parameters),
        active=False,
        created_at=event.occurred_at,
        updated_at=event.occurred_at,
    )


@_apply.register
def _(event: StrategyParametersChanged, state: StrategyState | None) -> StrategyState:
    assert state is not None
    return msgspec.structs.replace(
        state, parameters=dict(event.parameters), updated_at=event.occurred_at
    )


@_apply.register
def _(event: StrategyActivated, state: StrategyState | None) -> StrategyState:
    assert state is not None
    return msgspec.structs.replace(state, active=True, updated_at=event.occurred_at)


@_apply.register
def _(event: StrategyDeactivated, state: StrategyState | None) -> StrategyState:
    assert state is not None
    return msgspec.structs.replace(state, active=False, updated_at=event.occurred_at)


def evolve(state: StrategyState | None, event: Event) -> StrategyState:
    return _apply(event, state)


def fold(events: Iterable[Event]) -> StrategyState | None:
    state: StrategyState | None = None
    for event in events:
        state = evolve(state, event)
    return state
