"""Account commands: open an account, deposit, withdraw, charge a fee.

An account's stream id is the domain's ``account_stream_id(user_id, currency)``: one
account per user and currency, and a second opening meets the existing stream.
Opening loads the owner's user stream in the same query, to refuse an unknown or
disabled user; the user stream gets no event, so a user disabled while the account is
being opened may still end up with it (the account is then unusable only by policy).
"""

from __future__ import annotations

from datetime import datetime

from commands.edge import CurrencyCode, Label, RequiredReason, non_negative, positive
from commands.runtime import (
    CommandContext,
    CommandResult,
    Decision,
    Ledger,
    execute,
    execute_on_stream,
    on_stream,
    wanted,
)
from ledger.domain import account, user


class OpenAccount(account.OpenAccount, frozen=True, kw_only=True, forbid_unknown_fields=True):
    currency: CurrencyCode

    def __post_init__(self) -> None:
        non_negative(self.fee_rate, "fee_rate")
        if self.max_order_notional is not None:
            positive(self.max_order_notional, "max_order_notional")


class Deposit(account.Deposit, frozen=True, kw_only=True, forbid_unknown_fields=True):
    reference: Label = ""

    def __post_init__(self) -> None:
        positive(self.amount, "amount")


class Withdraw(account.Withdraw, frozen=True, kw_only=True, forbid_unknown_fields=True):
    reference: Label = ""

    def __post_init__(self) -> None:
        positive(self.amount, "amount")


class ChargeFee(account.ChargeFee, frozen=True, kw_only=True, forbid_unknown_fields=True):
    reason: RequiredReason

    def __post_init__(self) -> None:
        positive(self.amount, "amount")


async def open_account(
    ledger: Ledger, command: OpenAccount, context: CommandContext, *, now: datetime | None = None
) -> CommandResult:
    """AccountOpened on the (user, currency) stream."""
    moment = ledger.now(now)
    account_id = account.account_stream_id(command.user_id, command.currency)

    async def decide() -> Decision:
        loaded = await ledger.repository.load(
            wanted((account_id, account.STREAM_TYPE), (command.user_id, user.STREAM_TYPE))
        )
        events = account.decide_open_account(
            loaded[account_id].state,
            command,
            now=moment,
            owner=loaded[command.user_id].state,
        )
        return Decision(on_stream(loaded[account_id], events), loaded)

    return await execute(ledger, command, context, decide)


async def deposit(
    ledger: Ledger, command: Deposit, context: CommandContext, *, now: datetime | None = None
) -> CommandResult:
    """CashDeposited: external -> available cash."""
    moment = ledger.now(now)
    return await execute_on_stream(
        ledger,
        command,
        context,
        (command.account_id, account.STREAM_TYPE),
        lambda state: account.decide_deposit(state, command, now=moment),
    )


async def withdraw(
    ledger: Ledger, command: Withdraw, context: CommandContext, *, now: datetime | None = None
) -> CommandResult:
    """CashWithdrawn: available cash -> external, or INSUFFICIENT_FUNDS."""
    moment = ledger.now(now)
    return await execute_on_stream(
        ledger,
        command,
        context,
        (command.account_id, account.STREAM_TYPE),
        lambda state: account.decide_withdraw(state, command, now=moment),
    )


async def charge_fee(
    ledger: Ledger, command: ChargeFee, context: CommandContext, *, now: datetime | None = None
) -> CommandResult:
    """FeeCharged: available cash -> fee revenue, or INSUFFICIENT_FUNDS."""
    moment = ledger.now(now)
    return await execute_on_stream(
        ledger,
        command,
        context,
        (command.account_id, account.STREAM_TYPE),
        lambda state: account.decide_charge_fee(state, command, now=moment),
    )
