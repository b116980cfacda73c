"""What every read-model query shares: its roles, what it waits for, whose rows it sees.

A query route is declared with `query(...)`: the roles it admits (api/security.py
`access`, so they show in OpenAPI) and the projections it reads. Its handler receives a
`Reader` (a Litestar dependency), which by then has:
- read `consistent_with=TOKEN` and waited, bounded, until those projections applied the
  token's event (api/queries/waiting.py); a token that does not decode, or names no
  event, is a 400 INVALID_CONSISTENCY_TOKEN; a wait that runs out is a 503
  CONSISTENCY_TIMEOUT with Retry-After;
- set `owner`: the caller's user id when the caller is a trader, whose queries see only
  their own rows (their accounts and what is booked on them, their strategies and their
  signals), else None (analysts and admins read everything). A row the caller may not
  see is answered exactly like a row that does not exist: 404.

A trader's rows are found through read.accounts (or read.strategies), so for a trader
the wait also covers that projection: a just-opened account is then visible too.
"""

from __future__ import annotations

from typing import Annotated, Any, Final
from uuid import UUID

import asyncpg
import msgspec
from litestar import Request
from litestar.datastructures import State
from litestar.di import Provide
from litestar.params import QueryParameter

from api.consistency import InvalidConsistencyTokenError, decode_token
from api.errors import ApiProblem
from api.queries.paging import invalid
from api.queries.waiting import ProjectionWatcher, UnknownEventError, settle
from api.security import Principal, access, principal_of
from commands.instruments import instrument_stream_id
from ledger.domain.user import Role
from ledger.settings import Settings

READS_OPT: Final = "reads"
# Who reads the trading read models; a trader only their own rows.
READERS: Final = (Role.TRADER, Role.ANALYST, Role.ADMIN)
STATEMENT_TIMEOUT_S: Final = 5.0
RETRY_AFTER_S: Final = 1
_BIGINT_MAX: Final = 2**63 - 1

ConsistentWith = Annotated[
    str | None,
    QueryParameter(
        description="A command's `consistency_token`: wait (LEDGER_CONSISTENCY_WAIT_S, 2 s by "
        "default) until this read reflects that command, else 503 CONSISTENCY_TIMEOUT with "
        "Retry-After. A token that does not decode, or names no event, is a 400."
    ),
]


class Reads(msgspec.Struct, frozen=True, kw_only=True):
    """The projection a route reads, and the one a trader's rows are found through."""

    projection: str
    owned_through: str | None = None

    def projections(self, *, owned: bool) -> tuple[str, ...]:
        if owned and self.owned_through is not None:
            return (self.projection, self.owned_through)
        return (self.projection,)


def query(
    *roles: Role,
    projection: str,
    owned_through: str | None = None,
    summary: str,
    description: str = "",
    one: bool = False,
) -> dict[str, Any]:
    """Route keyword arguments of a query: access(...) plus the projections it reads.

    Every query may answer 503 (a `consistent_with` wait that ran out); `one` (a route that
    gets one row by id) may answer 404."""
    errors = (404, 503) if one else (503,)
    kwargs = access(*roles, summary=summary, description=description, errors=errors)
    reads = Reads(projection=projection, owned_through=owned_through)
    kwargs["opt"] = {**kwargs["opt"], READS_OPT: reads}
    kwargs["dependencies"] = {"reader": Provide(provide_reader)}
    return kwargs


class Reader:
    """A query's access to the read models, with the rows it may see."""

    def __init__(self, pool: asyncpg.Pool, owner: UUID | None) -> None:
        self.pool = pool
        self.owner = owner

    async def rows(self, statement: tuple[str, list[Any]]) -> list[asyncpg.Record]:
        sql, arguments = statement
        return list(await self.pool.fetch(sql, *arguments, timeout=STATEMENT_TIMEOUT_S))

    async def row(self, statement: tuple[str, list[Any]]) -> asyncpg.Record | None:
        sql, arguments = statement
        return await self.pool.fetchrow(sql, *arguments, timeout=STATEMENT_TIMEOUT_S)


async def provide_reader(
    request: Request[Principal, Any, State], consistent_with: ConsistentWith = None
) -> Reader:
    principal = principal_of(request)
    owner = principal.user_id if principal.role is Role.TRADER else None
    if consistent_with is not None:
        reads: Reads = request.route_handler.opt[READS_OPT]
        await _wait_for(request, consistent_with, reads.projections(owned=owner is not None))
    return Reader(request.app.state.pool, owner)


def _bad_token(message: str) -> ApiProblem:
    return invalid("consistent_with", "INVALID_CONSISTENCY_TOKEN", message)


async def _wait_for(
    request: Request[Principal, Any, State], token_text: str, projections: tuple[str, ...]
) -> None:
    try:
        token = decode_token(token_text)
    except InvalidConsistencyTokenError as error:
        raise _bad_token(str(error)) from None
    if token.tx > _BIGINT_MAX or token.position > _BIGINT_MAX:
        raise _bad_token("consistency token does not decode")
    watcher: ProjectionWatcher = request.app.state.projection_watcher
    settings: Settings = request.app.state.settings
    try:
        applied = await settle(watcher, token, projections, settings.consistency_wait_s)
    except UnknownEventError:
        raise _bad_token("the consistency token names no event of this ledger") from None
    if not applied:
        raise ApiProblem(
            503,
            "CONSISTENCY_TIMEOUT",
            f"the read model ({', '.join(projections)}) has not applied this write yet "
            f"(waited {settings.consistency_wait_s:g} s); retry",
            headers={"Retry-After": str(RETRY_AFTER_S)},
        )


def instrument_of(symbol: str | None) -> UUID | None:
    """The id of the instrument listed under `symbol` (ids are derived from symbols)."""
    return None if symbol is None else instrument_stream_id(symbol)


def not_found(code: str, what: str) -> ApiProblem:
    """A row that does not exist, or that the caller may not see: the same answer."""
    return ApiProblem(404, code, f"{what} not found")
