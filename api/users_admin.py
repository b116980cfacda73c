"""`ledger users create --role admin`: a user of any role, created outside the API.

The first admin cannot be created through the API (registration makes traders, and
only an admin may do more), so the CLI calls `create_user` with a database URL. It
goes through the same path as the API: the user command, then the credential row.
"""

from __future__ import annotations

import uuid

import asyncpg

from api.passwords import PASSWORD_LENGTH_MAX, PASSWORD_LENGTH_MIN, HashCost, Passwords
from api.registration import Registrar
from commands.bootstrap import bootstrap
from commands.runtime import CommandContext
from ledger.domain.errors import ValidationError
from ledger.domain.user import Role


class WeakPasswordError(ValidationError):
    """Raised when a password given to `ledger users create` is too short or too long."""

    code = "INVALID_PASSWORD"


async def create_user(
    database_url: str,
    email: str,
    password: str,
    role: Role | str,
    display_name: str | None = None,
    *,
    cost: HashCost | None = None,
) -> uuid.UUID:
    """Register a user with `role`; return its id. Domain errors (EMAIL_TAKEN...) propagate.

    `cost` is the argon2 cost of the hash (the settings' one; argon2-cffi's defaults if None).
    """
    if not PASSWORD_LENGTH_MIN <= len(password) <= PASSWORD_LENGTH_MAX:
        raise WeakPasswordError(
            f"a password has {PASSWORD_LENGTH_MIN} to {PASSWORD_LENGTH_MAX} characters"
        )
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    passwords = Passwords(cost)
    try:
        registrar = Registrar(pool, bootstrap(pool), passwords)
        registered = await registrar.register(
            email=email,
            password=password,
            display_name=display_name,
            role=Role(role),
            context=CommandContext(actor="cli", correlation_id=uuid.uuid4()),
        )
        return registered.user_id
    finally:
        passwords.close()
        await pool.close()
