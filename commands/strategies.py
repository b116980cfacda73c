"""Strategy commands: create, change parameters, activate, deactivate."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec

from commands.edge import Name
from commands.runtime import CommandContext, CommandResult, Ledger, execute_on_stream
from ledger.domain import strategy
from ledger.domain.strategy import PARAMETER_COUNT_MAX, PARAMETER_VALUE_LENGTH_MAX

# Decimal parameters travel as strings: a float is not among the value types, so a
# JSON number with a fraction is refused while decoding.
ParameterName = Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
ParameterValue = (
    Annotated[str, msgspec.Meta(max_length=PARAMETER_VALUE_LENGTH_MAX)] | int | bool | None
)
EdgeParameters = Annotated[
    dict[ParameterName, ParameterValue], msgspec.Meta(max_length=PARAMETER_COUNT_MAX)
]


class CreateStrategy(
    strategy.CreateStrategy, frozen=True, kw_only=True, forbid_unknown_fields=True
):
    name: Name
    parameters: EdgeParameters = msgspec.field(default_factory=dict)


class ChangeStrategyParameters(
    strategy.ChangeStrategyParameters, frozen=True, kw_only=True, forbid_unknown_fields=True
):
    parameters: EdgeParameters


class ActivateStrategy(
    strategy.ActivateStrategy, frozen=True, kw_only=True, forbid_unknown_fields=True
):
    pass


class DeactivateStrategy(
    strategy.DeactivateStrategy, frozen=True, kw_only=True, forbid_unknown_fields=True
):
    pass


async def create_strategy(
    ledger: Ledger, command: CreateStrategy, context: CommandContext, *, now: datetime | None = None
) -> CommandResult:
    """StrategyCreated (inactive)."""
    moment = ledger.now(now)
    return await execute_on_stream(
        ledger,
        command,
        context,
        (command.strategy_id, strategy.STREAM_TYPE),
        lambda state: strategy.decide_create_strategy(state, command, now=moment),
    )


async def change_strategy_parameters(
    ledger: Ledger,
    command: ChangeStrategyParameters,
    context: CommandContext,
    *,
    now: datetime | None = None,
) -> CommandResult:
    """StrategyParametersChanged, or nothing when the parameters are the same."""
    moment = ledger.now(now)
    return await execute_on_stream(
        ledger,
        command,
        context,
        (command.strategy_id, strategy.STREAM_TYPE),
        lambda state: strategy.decide_change_strategy_parameters(state, command, now=moment),
    )


async def activate_strategy(
    ledger: Ledger,
    command: ActivateStrategy,
    context: CommandContext,
    *,
    now: datetime | None = None,
) -> CommandResult:
    """StrategyActivated: it may emit signals."""
    moment = ledger.now(now)
    return await execute_on_stream(
        ledger,
        command,
        context,
        (command.strategy_id, strategy.STREAM_TYPE),
        lambda state: strategy.decide_activate_strategy(state, command, now=moment),
    )


async def deactivate_strategy(
    ledger: Ledger,
    command: DeactivateStrategy,
    context: CommandContext,
    *,
    now: datetime | None = None,
) -> CommandResult:
    """StrategyDeactivated."""
    moment = ledger.now(now)
    return await execute_on_stream(
        ledger,
        command,
        context,
        (command.strategy_id, strategy.STREAM_TYPE),
        lambda state: strategy.decide_deactivate_strategy(state, command, now=moment),
    )
