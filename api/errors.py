"""Every error as RFC 9457 problem+json, with a stable `code` and the `request_id`.

Litestar's Problem Details plugin turns exceptions into `ApiProblem`s (a
`ProblemDetailsException` that also writes `code`, `request_id`, `instance` and, for
validation, `errors`). Domain and ledger errors keep their own `.code`; their class
decides the HTTP status. Anything else is a 500 whose body says nothing but its code
and request id: the traceback, and any SQL in it, goes to the log only.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Final

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi.datastructures import ResponseSpec
from litestar.plugins.problem_details import (
    ProblemDetailsConfig,
    ProblemDetailsException,
    ProblemDetailsPlugin,
)
from litestar.status_codes import (
    HTTP_400_BAD_REQUEST,
    HTTP_401_UNAUTHORIZED,
    HTTP_403_FORBIDDEN,
    HTTP_404_NOT_FOUND,
    HTTP_405_METHOD_NOT_ALLOWED,
    HTTP_409_CONFLICT,
    HTTP_413_REQUEST_ENTITY_TOO_LARGE,
    HTTP_422_UNPROCESSABLE_ENTITY,
    HTTP_429_TOO_MANY_REQUESTS,
    HTTP_500_INTERNAL_SERVER_ERROR,
    HTTP_503_SERVICE_UNAVAILABLE,
)

from api.request_id import request_id_of
from ledger.domain import errors as domain
from ledger.errors import (
    ConcurrencyError,
    DuplicateEventError,
    EventTooLargeError,
    IdempotencyConflictError,
    LedgerError,
    StreamNotFoundError,
)

logger = logging.getLogger(__name__)

PROBLEM_TYPE_PREFIX: Final = "urn:ledger:problem:"
DETAIL_LENGTH_MAX: Final = 500
ERRORS_MAX: Final = 50

# Litestar's own HTTP errors: the code a client can switch on, by status.
_HTTP_CODES: Final[Mapping[int, str]] = {
    HTTP_400_BAD_REQUEST: "MALFORMED_REQUEST",
    HTTP_401_UNAUTHORIZED: "UNAUTHENTICATED",
    HTTP_403_FORBIDDEN: "FORBIDDEN",
    HTTP_404_NOT_FOUND: "NOT_FOUND",
    HTTP_405_METHOD_NOT_ALLOWED: "METHOD_NOT_ALLOWED",
    HTTP_413_REQUEST_ENTITY_TOO_LARGE: "REQUEST_TOO_LARGE",
    HTTP_429_TOO_MANY_REQUESTS: "TOO_MANY_REQUESTS",
}

# Checked in order: the first class an error is an instance of gives its status.
_DOMAIN_STATUSES: Final[tuple[tuple[type[domain.DomainError], int], ...]] = (
    (domain.NotFoundError, HTTP_404_NOT_FOUND),
    (domain.ValidationError, HTTP_422_UNPROCESSABLE_ENTITY),
    (domain.RiskCheckError, HTTP_422_UNPROCESSABLE_ENTITY),
    (domain.AlreadyExistsError, HTTP_409_CONFLICT),
    (domain.EmailTakenError, HTTP_409_CONFLICT),
    (domain.SymbolTakenError, HTTP_409_CONFLICT),
    (domain.InvalidStateTransitionError, HTTP_409_CONFLICT),
    (domain.UserDisabledError, HTTP_409_CONFLICT),
    (domain.StrategyInactiveError, HTTP_409_CONFLICT),
    (domain.OrderNotExpirableError, HTTP_409_CONFLICT),
)

_LEDGER_STATUSES: Final[tuple[tuple[type[LedgerError], int], ...]] = (
    (StreamNotFoundError, HTTP_404_NOT_FOUND),
    (ConcurrencyError, HTTP_409_CONFLICT),
    (IdempotencyConflictError, HTTP_409_CONFLICT),
    (DuplicateEventError, HTTP_409_CONFLICT),
    (EventTooLargeError, HTTP_413_REQUEST_ENTITY_TOO_LARGE),
)


# What each documented error status means, as the OpenAPI document says it.
_STATUS_DESCRIPTIONS: Final[Mapping[int, str]] = {
    HTTP_400_BAD_REQUEST: "Malformed or invalid input (VALIDATION_ERROR names the fields).",
    HTTP_401_UNAUTHORIZED: "No valid access token (TOKEN_MISSING, TOKEN_EXPIRED, ...).",
    HTTP_403_FORBIDDEN: "The caller's role, or ownership, does not allow this.",
    HTTP_404_NOT_FOUND: "What the request names does not exist.",
    HTTP_409_CONFLICT: "Conflicts with the current state or an earlier request.",
    HTTP_413_REQUEST_ENTITY_TOO_LARGE: "The request body is over 64 KiB.",
    HTTP_422_UNPROCESSABLE_ENTITY: "Well-formed, but refused by a business rule.",
    HTTP_429_TOO_MANY_REQUESTS: "Too many requests; see Retry-After.",
    HTTP_503_SERVICE_UNAVAILABLE: "Temporarily unable to answer; see Retry-After.",
}
# Commands can be refused by the domain and the ledger in all of these ways.
COMMAND_ERRORS: Final = (
    HTTP_404_NOT_FOUND,
    HTTP_409_CONFLICT,
    HTTP_413_REQUEST_ENTITY_TOO_LARGE,
    HTTP_422_UNPROCESSABLE_ENTITY,
)


class FieldProblem(msgspec.Struct, frozen=True, kw_only=True):
    """One invalid input: where it was (body, query, path, header), which, and why."""

    field: str
    source: str
    message: str


class Problem(msgspec.Struct, frozen=True, kw_only=True):
    """The body of every error answer, as `ApiProblem.to_response` writes it (OpenAPI only)."""

    type: str
    title: str
    status: int
    detail: str
    instance: str
    code: str
    request_id: str
    errors: list[FieldProblem] | None = None


def problem_responses(*statuses: int) -> dict[int, ResponseSpec]:
    """OpenAPI responses for these error statuses, each a problem+json `Problem`."""
    return {
        status: ResponseSpec(
            data_container=Problem,
            description=_STATUS_DESCRIPTIONS[status],
            media_type="application/problem+json",
            generate_examples=False,
        )
        for status in sorted(set(statuses))
    }


class ApiProblem(ProblemDetailsException):
    """A problem the API answers with: status, stable code, title, detail, field errors."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        *,
        errors: list[dict[str, str]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(
            detail=detail[:DETAIL_LENGTH_MAX],
            status_code=status,
            headers=headers,
            type_=PROBLEM_TYPE_PREFIX + code,
            title=code.replace("_", " ").capitalize(),
        )
        self.code = code
        self.errors = errors

    def to_response(self, request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
        body: dict[str, Any] = {
            "type": self.type_,
            "title": self.title,
            "status": self.status_code,
            "detail": self.detail,
            "instance": request.url.path,
            "code": self.code,
            "request_id": request_id_of(request.scope),
        }
        if self.errors is not None:
            body["errors"] = self.errors[:ERRORS_MAX]
        return Response(
            body,
            headers=self.headers,
            media_type="application/problem+json",
            status_code=self.status_code,
        )


def _from_http(error: HTTPException) -> ApiProblem:
    if isinstance(error, ApiProblem):
        return error
    if isinstance(error, ValidationException):
        return ApiProblem(
            HTTP_400_BAD_REQUEST,
            "VALIDATION_ERROR",
            _validation_detail(error.detail),
            errors=_field_errors(error.extra),
        )
    status = error.status_code
    if status >= HTTP_500_INTERNAL_SERVER_ERROR:
        # Litestar's own 5xx (e.g. a misconfigured route) says nothing more to a client.
        return ApiProblem(status, "INTERNAL_ERROR", "the server failed to answer this request")
    headers = dict(error.headers) if error.headers else None
    return ApiProblem(
        status, _HTTP_CODES.get(status, f"HTTP_{status}"), error.detail, headers=headers
    )


def _validation_detail(detail: str) -> str:
    # Litestar's message names the route ("Validation failed for POST /..."); keep it short.
    return detail if detail.startswith("Validation failed") else "the request is not valid"


def _field_errors(extra: object) -> list[dict[str, str]]:
    """Litestar's validation details as [{field, source, message}], bounded."""
    found: list[dict[str, str]] = []
    if not isinstance(extra, list):
        return found
    for item in extra[:ERRORS_MAX]:
        if isinstance(item, Mapping):
            found.append(
                {
                    "field": str(item.get("key", "")),
                    "source": _source_name(item.get("source", "body")),
                    "message": str(item.get("message", ""))[:DETAIL_LENGTH_MAX],
                }
            )
    return found


def _source_name(source: object) -> str:
    # Litestar gives a ParamType enum for parameters ("query", "path", "header"...).
    return str(getattr(source, "value", source))


def _from_domain(error: domain.DomainError) -> ApiProblem:
    status = next(
        (status for kind, status in _DOMAIN_STATUSES if isinstance(error, kind)),
        HTTP_422_UNPROCESSABLE_ENTITY,
    )
    return ApiProblem(status, error.code, str(error))


def _from_ledger(error: LedgerError) -> ApiProblem:
    status = next((status for kind, status in _LEDGER_STATUSES if isinstance(error, kind)), None)
    if status is None:
        # An append the API built badly is the server's fault; the log has the details.
        logger.error("ledger error %s", error.code, exc_info=error)
        return ApiProblem(HTTP_500_INTERNAL_SERVER_ERROR, error.code, "the append failed")
    return ApiProblem(status, error.code, str(error))


def internal_error(request: Request[Any, Any, Any], error: Exception) -> Response[Any]:
    """Any exception no other handler took: logged in full, answered with its request id."""
    logger.error(
        "unhandled %s on %s %s (request_id=%s)",
        type(error).__name__,
        request.method,
        request.url.path,
        request_id_of(request.scope),
        exc_info=error,
    )
    problem = ApiProblem(
        HTTP_500_INTERNAL_SERVER_ERROR, "INTERNAL_ERROR", "the server failed to answer this request"
    )
    return problem.to_response(request)


def problem_details_plugin() -> ProblemDetailsPlugin:
    return ProblemDetailsPlugin(
        ProblemDetailsConfig(
            exception_to_problem_detail_map={
                HTTPException: _from_http,
                domain.DomainError: _from_domain,
                LedgerError: _from_ledger,
            }
        )
    )
