"""Users as the users read model has them (admin): role and status, never the hash."""

from __future__ import annotations

from typing import Final

from api.queries.filters import equals
from api.queries.model import Doc, ReadModel
from api.queries.schemas import UserView
from ledger.domain.user import Role

MODEL: Final = ReadModel(
    name="users",
    one="user",
    table="read.users",
    view=UserView,
    sort=("registered_at", "user_id"),
    key=("user_id",),
    roles=(Role.ADMIN,),
    filters=(
        equals("role", Role),
        equals("disabled", bool),
    ),
    listing=Doc(
        "List users", "Newest first (by `registered_at`, then id). Filters: role, disabled."
    ),
    reading=Doc("A user"),
)
