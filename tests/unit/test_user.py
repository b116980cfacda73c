"""User: given events / when command / then events."""

from __future__ import annotations

import pytest

from ledger.domain.errors import (
    AlreadyExistsError,
    EmailTakenError,
    InvalidEmailError,
    InvalidPasswordHashError,
    InvalidTextError,
    UserDisabledError,
    UserNotFoundError,
)
from ledger.domain.user import (
    ChangePassword,
    ChangeRole,
    DisableUser,
    PasswordChanged,
    RegisterUser,
    Role,
    RoleChanged,
    UserDisabled,
    UserRegistered,
    decide_change_password,
    decide_change_role,
    decide_disable_user,
    decide_register_user,
    fold,
)
from tests.unit.support import LATER, NOW, OTHER_PASSWORD_HASH, PASSWORD_HASH, USER_ID

REGISTERED = UserRegistered(
    occurred_at=NOW,
    user_id=USER_ID,
    email="ada@example.com",
    display_name="Ada Lovelace",
    role=Role.TRADER,
    password_hash=PASSWORD_HASH,
    token_version=1,
)
DISABLED = UserDisabled(occurred_at=NOW, reason="left", token_version=2)


def register(**changes: str) -> RegisterUser:
    fields = {
        "email": " Ada@Example.com ",
        "display_name": "Ada Lovelace",
        "password_hash": PASSWORD_HASH,
    } | changes
    return RegisterUser(user_id=USER_ID, role=Role.TRADER, **fields)


def test_register_normalises_the_email_and_starts_token_version_at_one() -> None:
    assert decide_register_user(None, register(), now=NOW, email_taken=False) == [REGISTERED]


def test_register_twice_is_refused() -> None:
    with pytest.raises(AlreadyExistsError):
        decide_register_user(fold([REGISTERED]), register(), now=NOW, email_taken=False)


def test_register_with_a_taken_email_is_refused() -> None:
    with pytest.raises(EmailTakenError):
        decide_register_user(None, register(), now=NOW, email_taken=True)


@pytest.mark.parametrize("email", ["ada", "ada@", "@example.com", "ada@example", "a b@example.com"])
def test_register_with_a_malformed_email_is_refused(email: str) -> None:
    with pytest.raises(InvalidEmailError):
        decide_register_user(None, register(email=email), now=NOW, email_taken=False)


@pytest.mark.parametrize(
    "password_hash", ["hunter2", "$argon2i$v=19$m=65536,t=3,p=4$c2FsdA$aGFzaA", ""]
)
def test_register_refuses_anything_but_an_argon2id_hash(password_hash: str) -> None:
    with pytest.raises(InvalidPasswordHashError):
        decide_register_user(
            None, register(password_hash=password_hash), now=NOW, email_taken=False
        )


def test_register_refuses_an_empty_display_name() -> None:
    with pytest.raises(InvalidTextError):
        decide_register_user(None, register(display_name="  "), now=NOW, email_taken=False)


def test_change_password_bumps_the_token_version() -> None:
    command = ChangePassword(user_id=USER_ID, password_hash=OTHER_PASSWORD_HASH)
    events = decide_change_password(fold([REGISTERED]), command, now=LATER)
    assert events == [
        PasswordChanged(occurred_at=LATER, password_hash=OTHER_PASSWORD_HASH, token_version=2)
    ]
    state = fold([REGISTERED, *events])
    assert state is not None
    assert (state.password_hash, state.token_version, state.updated_at) == (
        OTHER_PASSWORD_HASH,
        2,
        LATER,
    )


def test_change_password_refuses_a_plain_password() -> None:
    with pytest.raises(InvalidPasswordHashError):
        decide_change_password(
            fold([REGISTERED]), ChangePassword(user_id=USER_ID, password_hash="secret"), now=LATER
        )


def test_change_password_of_an_unknown_user_is_refused() -> None:
    with pytest.raises(UserNotFoundError):
        decide_change_password(
            None, ChangePassword(user_id=USER_ID, password_hash=PASSWORD_HASH), now=LATER
        )


def test_change_role_bumps_the_token_version() -> None:
    events = decide_change_role(
        fold([REGISTERED]), ChangeRole(user_id=USER_ID, role=Role.AUDITOR), now=LATER
    )
    assert events == [
        RoleChanged(
            occurred_at=LATER, role=Role.AUDITOR, previous_role=Role.TRADER, token_version=2
        )
    ]


def test_change_role_to_the_same_role_records_nothing() -> None:
    assert (
        decide_change_role(
            fold([REGISTERED]), ChangeRole(user_id=USER_ID, role=Role.TRADER), now=LATER
        )
        == []
    )


def test_disable_bumps_the_token_version_and_is_final() -> None:
    events = decide_disable_user(
        fold([REGISTERED]), DisableUser(user_id=USER_ID, reason=" left "), now=NOW
    )
    assert events == [DISABLED]
    disabled = fold([REGISTERED, DISABLED])
    assert disabled is not None
    assert disabled.disabled
    with pytest.raises(UserDisabledError):
        decide_disable_user(disabled, DisableUser(user_id=USER_ID), now=LATER)
    with pytest.raises(UserDisabledError):
        decide_change_role(disabled, ChangeRole(user_id=USER_ID, role=Role.ADMIN), now=LATER)
    with pytest.raises(UserDisabledError):
        decide_change_password(
            disabled, ChangePassword(user_id=USER_ID, password_hash=PASSWORD_HASH), now=LATER
        )


def test_token_version_counts_every_revoking_event() -> None:
    state = fold(
        [
            REGISTERED,
            PasswordChanged(occurred_at=NOW, password_hash=OTHER_PASSWORD_HASH, token_version=2),
            RoleChanged(
                occurred_at=NOW, role=Role.ADMIN, previous_role=Role.TRADER, token_version=3
            ),
            UserDisabled(occurred_at=NOW, reason="", token_version=4),
        ]
    )
    assert state is not None
    assert (state.token_version, state.role, state.disabled) == (4, Role.ADMIN, True)


def test_no_event_carries_a_password() -> None:
    fields = set(UserRegistered.__struct_fields__) | set(PasswordChanged.__struct_fields__)
    assert "password" not in fields
    assert "password_hash" in fields
