"""The one place where the command side is wired: a pool in, a Ledger out.

The API's lifespan, the workers and the benchmarks call :func:`bootstrap` once per
process (the stream cache is per process) and pass the Ledger to handlers, or call
:func:`handle` with any command of this package.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from types import MappingProxyType
from typing import Any, Final

import asyncpg
import msgspec
from opentelemetry.trace import TracerProvider

from commands import accounts, instruments, orders, signals, strategies, users
from commands.runtime import (
    ATTEMPTS_MAX,
    CACHE_STREAMS_MAX,
    CommandContext,
    CommandResult,
    Executed,
    Ledger,
    Repository,
    StreamCache,
    utc_now,
)
from ledger.store import EventStore

Handler = Callable[..., Awaitable[CommandResult]]

HANDLERS: Final[Mapping[type[msgspec.Struct], Handler]] = MappingProxyType(
    {
        users.RegisterUser: users.register_user,
        users.ChangePassword: users.change_password,
        users.ChangeRole: users.change_role,
        users.DisableUser: users.disable_user,
        accounts.OpenAccount: accounts.open_account,
        accounts.Deposit: accounts.deposit,
        accounts.Withdraw: accounts.withdraw,
        accounts.ChargeFee: accounts.charge_fee,
        instruments.ListInstrument: instruments.list_instrument,
        instruments.HaltInstrument: instruments.halt_instrument,
        instruments.ResumeInstrument: instruments.resume_instrument,
        instruments.DelistInstrument: instruments.delist_instrument,
        strategies.CreateStrategy: strategies.create_strategy,
        strategies.ChangeStrategyParameters: strategies.change_strategy_parameters,
        strategies.ActivateStrategy: strategies.activate_strategy,
        strategies.DeactivateStrategy: strategies.deactivate_strategy,
        signals.EmitSignal: signals.emit_signal,
        orders.PlaceOrder: orders.place_order,
        orders.FillOrder: orders.fill_order,
        orders.CancelOrder: orders.cancel_order,
        orders.ExpireOrder: orders.expire_order,
        orders.RejectOrder: orders.reject_order,
    }
)


def bootstrap(
    pool: asyncpg.Pool,
    *,
    clock: Callable[[], datetime] = utc_now,
    attempts_max: int = ATTEMPTS_MAX,
    cache_streams_max: int = CACHE_STREAMS_MAX,
    on_executed: Callable[[Executed], None] | None = None,
    tracer_provider: TracerProvider | None = None,
) -> Ledger:
    """The command side on a pool the caller owns (and closes); `on_executed` for metrics;
    its spans go to `tracer_provider` (else to the global one, a no-op unless the process
    set one)."""
    tracer = None if tracer_provider is None else tracer_provider.get_tracer("commands")
    repository = Repository(EventStore(pool), StreamCache(cache_streams_max), tracer=tracer)
    return Ledger(repository, clock=clock, attempts_max=attempts_max, on_executed=on_executed)


async def handle(
    ledger: Ledger, command: Any, context: CommandContext, *, now: datetime | None = None
) -> CommandResult:
    """Run the handler of ``command``'s type (one of this package's command Structs)."""
    handler = HANDLERS.get(type(command))
    assert handler is not None, f"no handler for {type(command).__name__}"
    return await handler(ledger, command, context, now=now)
