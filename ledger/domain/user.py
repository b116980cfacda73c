"""User aggregate: registration, password change, role change, disabling.

The domain never sees a password, only its argon2id hash (hashing happens in the
API, off the event loop). ``token_version`` starts at 1 and is bumped by every
event that must revoke existing sessions: a password change, a role change, a
disable. Each such event carries the new version, so a projection or the auth
layer reads it from the event without counting.

Email uniqueness spans streams, so the handler looks it up and passes
``email_taken`` into :func:`decide_register_user`; the read model's unique index
is the final guard against a race.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import datetime
from enum import StrEnum
from functools import singledispatch
from typing import Final
from uuid import UUID

import msgspec

from ledger.domain.base import Command, Event, assert_utc
from ledger.domain.errors import (
    AlreadyExistsError,
    EmailTakenError,
    InvalidEmailError,
    InvalidPasswordHashError,
    UserDisabledError,
    UserNotFoundError,
)
from ledger.domain.text import NAME_LENGTH_MAX, REASON_LENGTH_MAX, check_text

STREAM_TYPE: Final = "user"
EMAIL_LENGTH_MAX: Final = 254
PASSWORD_HASH_LENGTH_MAX: Final = 512

_EMAIL: Final = re.compile(r"[^@\s]+@[^@\s.]+(\.[^@\s.]+)+")
_ARGON2ID: Final = re.compile(
    r"\$argon2id\$v=\d+\$m=\d+,t=\d+,p=\d+\$[A-Za-z0-9+/]+={0,2}\$[A-Za-z0-9+/]+={0,2}"
)


class Role(StrEnum):
    ADMIN = "admin"
    TRADER = "trader"
    ANALYST = "analyst"
    AUDITOR = "auditor"
    EXECUTION = "execution"


# Events ---------------------------------------------------------------------


class UserRegistered(Event, frozen=True, kw_only=True):
    user_id: UUID
    email: str
    display_name: str
    role: Role
    password_hash: str
    token_version: int


class PasswordChanged(Event, frozen=True, kw_only=True):
    password_hash: str
    token_version: int


class RoleChanged(Event, frozen=True, kw_only=True):
    role: Role
    previous_role: Role
    token_version: int


class UserDisabled(Event, frozen=True, kw_only=True):
    reason: str
    token_version: int


# Commands -------------------------------------------------------------------


class RegisterUser(Command, frozen=True, kw_only=True):
    user_id: UUID
    email: str
    display_name: str
    role: Role
    password_hash: str


class ChangePassword(Command, frozen=True, kw_only=True):
    user_id: UUID
    password_hash: str


class ChangeRole(Command, frozen=True, kw_only=True):
    user_id: UUID
    role: Role


class DisableUser(Command, frozen=True, kw_only=True):
    user_id: UUID
    reason: str = ""


# State ----------------------------------------------------------------------


class UserState(msgspec.Struct, frozen=True, kw_only=True):
    user_id: UUID
    email: str
    display_name: str
    role: Role
    password_hash: str
    token_version: int
    disabled: bool
    registered_at: datetime
    updated_at: datetime


def normalize_email(email: str) -> str:
    """The stored form of an email: stripped and lower-cased, or :class:`InvalidEmailError`."""
    normalized = email.strip().lower()
    if len(normalized) > EMAIL_LENGTH_MAX or not _EMAIL.fullmatch(normalized):
        raise InvalidEmailError(f"not an email address: {email!r}")
    return normalized


def _check_password_hash(password_hash: str) -> str:
    if len(password_hash) > PASSWORD_HASH_LENGTH_MAX or not _ARGON2ID.fullmatch(password_hash):
        raise InvalidPasswordHashError("password_hash must be an argon2id PHC string")
    return password_hash


def _enabled(state: UserState | None, user_id: UUID) -> UserState:
    if state is None:
        raise UserNotFoundError(f"user {user_id} does not exist")
    assert state.user_id == user_id, "handler loaded the wrong stream"
    if state.disabled:
        raise UserDisabledError(f"user {user_id} is disabled")
    return state


# Decisions ------------------------------------------------------------------


def decide_register_user(
    state: UserState | None, command: RegisterUser, *, now: datetime, email_taken: bool
) -> list[Event]:
    assert_utc(now)
    if state is not None:
        raise AlreadyExistsError(f"user {command.user_id} already exists")
    email = normalize_email(command.email)
    if email_taken:
        raise EmailTakenError(f"email {email} is already registered")
    return [
        UserRegistered(
            occurred_at=now,
            user_id=command.user_id,
            email=email,
            display_name=check_text(
                command.display_name, field="display_name", length_max=NAME_LENGTH_MAX
            ),
            role=command.role,
            password_hash=_check_password_hash(command.password_hash),
            token_version=1,
        )
    ]


def decide_change_password(
    state: UserState | None, command: ChangePassword, *, now: datetime
) -> list[Event]:
    assert_utc(now)
    user = _enabled(state, command.user_id)
    return [
        PasswordChanged(
            occurred_at=now,
            password_hash=_check_password_hash(command.password_hash),
            token_version=user.token_version + 1,
        )
    ]


def decide_change_role(
    state: UserState | None, command: ChangeRole, *, now: datetime
) -> list[Event]:
    """A change to the role the user already has changes nothing and records nothing."""
    assert_utc(now)
    user = _enabled(state, command.user_id)
    if command.role is user.role:
        return []
    return [
        RoleChanged(
            occurred_at=now,
            role=command.role,
            previous_role=user.role,
            token_version=user.token_version + 1,
        )
    ]


def decide_disable_user(
    state: UserState | None, command: DisableUser, *, now: datetime
) -> list[Event]:
    """Disabling is final; disabling a disabled user is a :class:`UserDisabledError`."""
    assert_utc(now)
    user = _enabled(state, command.user_id)
    reason = check_text(
        command.reason, field="reason", length_max=REASON_LENGTH_MAX, allow_empty=True
    )
    return [UserDisabled(occurred_at=now, reason=reason, token_version=user.token_version + 1)]


# Evolution ------------------------------------------------------------------


@singledispatch
def _apply(event: Event, state: UserState | None) -> UserState:
    raise AssertionError(f"{type(event).__name__} does not belong to a user stream")


@_apply.register
def _(event: UserRegistered, state: UserState | None) -> UserState:
    assert state is None, "a user is registered once"
    return UserState(
        user_id=event.user_id,
        email=event.email,
        display_name=event.display_name,
        role=event.role,
        password_hash=event.password_hash,
        token_version=event.token_version,
        disabled=False,
        registered_at=event.occurred_at,
        updated_at=event.occurred_at,
    )


@_apply.register
def _(event: PasswordChanged, state: UserState | None) -> UserState:
    assert state is not None
    return msgspec.structs.replace(
        state,
        password_hash=event.password_hash,
        token_version=event.token_version,
        updated_at=event.occurred_at,
    )


@_apply.register
def _(event: RoleChanged, state: UserState | None) -> UserState:
    assert state is not None
    return msgspec.structs.replace(
        state, role=event.role, token_version=event.token_version, updated_at=event.occurred_at
    )


@_apply.register
def _(event: UserDisabled, state: UserState | None) -> UserState:
    assert state is not None
    return msgspec.structs.replace(
        state, disabled=True, token_version=event.token_version, updated_at=event.occurred_at
    )


def evolve(state: UserState | None, event: Event) -> UserState:
    return _apply(event, state)


def fold(events: Iterable[Event]) -> UserState | None:
    state: UserState | None = None
    for event in events:
        state = evolve(state, event)
    return state
