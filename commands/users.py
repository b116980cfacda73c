"""User commands: register, change password, change role, disable.

Unique emails without a read model: a user's stream id is derived from the normalised
email (:func:`user_stream_id`), so a second registration with the same email loads a
stream that exists, and two concurrent ones append to the same new stream, where the
store lets only one of them in (the other retries and finds the stream taken). The
decision is then told ``email_taken``: the domain's :class:`EmailTakenError`
(``EMAIL_TAKEN``) is what the client can act on, rather than ``ALREADY_EXISTS`` about
an id it never chose. The price: an email never changes, and is never freed for reuse.
"""

from __future__ import annotations

from datetime import datetime
from typing import Final
from uuid import UUID, uuid5

import msgspec

from commands.edge import Email, Name, PasswordHash, Reason
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
from ledger.domain import user
from ledger.domain.user import Role

USER_NAMESPACE: Final = UUID("3d0f7c62-95a1-5b8e-a4c9-7e21b0d6f3a5")


def user_stream_id(email: str) -> UUID:
    """The stream of the user registered with ``email`` (raises InvalidEmailError)."""
    return uuid5(USER_NAMESPACE, user.normalize_email(email))


class RegisterUser(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Register a user; the API hashes the password with argon2id before this is sent.

    No user id: it is :func:`user_stream_id` of the email.
    """

    email: Email
    display_name: Name
    role: Role
    password_hash: PasswordHash


class ChangePassword(user.ChangePassword, frozen=True, kw_only=True, forbid_unknown_fields=True):
    password_hash: PasswordHash


class ChangeRole(user.ChangeRole, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pass


class DisableUser(user.DisableUser, frozen=True, kw_only=True, forbid_unknown_fields=True):
    reason: Reason = ""


async def register_user(
    ledger: Ledger, command: RegisterUser, context: CommandContext, *, now: datetime | None = None
) -> CommandResult:
    """UserRegistered on the email's stream, or EMAIL_TAKEN."""
    moment = ledger.now(now)
    user_id = user_stream_id(command.email)
    registration = user.RegisterUser(
        user_id=user_id,
        email=command.email,
        display_name=command.display_name,
        role=command.role,
        password_hash=command.password_hash,
    )

    async def decide() -> Decision:
        loaded = await ledger.repository.load(wanted((user_id, user.STREAM_TYPE)))
        taken = loaded[user_id].state is not None
        # The stream is the email's: an existing one is the email taken, and None stands
        # for it so that the decision reports EMAIL_TAKEN (see the module docstring).
        events = user.decide_register_user(None, registration, now=moment, email_taken=taken)
        return Decision(on_stream(loaded[user_id], events), loaded)

    return await execute(ledger, command, context, decide)


async def change_password(
    ledger: Ledger, command: ChangePassword, context: CommandContext, *, now: datetime | None = None
) -> CommandResult:
    """PasswordChanged with the next token version (revokes every session)."""
    moment = ledger.now(now)
    return await execute_on_stream(
        ledger,
        command,
        context,
        (command.user_id, user.STREAM_TYPE),
        lambda state: user.decide_change_password(state, command, now=moment),
    )


async def change_role(
    ledger: Ledger, command: ChangeRole, context: CommandContext, *, now: datetime | None = None
) -> CommandResult:
    """RoleChanged, or nothing when the user already has the role."""
    moment = ledger.now(now)
    return await execute_on_stream(
        ledger,
        command,
        context,
        (command.user_id, user.STREAM_TYPE),
        lambda state: user.decide_change_role(state, command, now=moment),
    )


async def disable_user(
    ledger: Ledger, command: DisableUser, context: CommandContext, *, now: datetime | None = None
) -> CommandResult:
    """UserDisabled (final)."""
    moment = ledger.now(now)
    return await execute_on_stream(
        ledger,
        command,
        context,
        (command.user_id, user.STREAM_TYPE),
        lambda state: user.decide_disable_user(state, command, now=moment),
    )
