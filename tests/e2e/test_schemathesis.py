"""schemathesis against the served API's OpenAPI: no 5xx, every answer as documented.

The document is the app's own (`create_app(...).openapi_schema`, the one served at
/schema/openapi.json, which a test checks), loaded at collection so that each operation is
a test of its own; the requests go to a real uvicorn server on a database of this module's
own, with real NATS. Each request carries the access token of the first role its route
admits ("**Roles:** ..." in its description), so guards pass and the handlers run; sign-out
gets a user of its own, whose token it revokes. `GET /events/live` never ends by design
and is tested in test_live.py instead.

The checks: `not_a_server_error`, `status_code_conformance` and
`response_schema_conformance`. The figures (operations, cases, answers by status,
failures) are printed at the end of the module.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from typing import Any, Final

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    response_schema_conformance,
    status_code_conformance,
)

from api.app import create_app
from ledger.domain.user import Role
from ledger.settings import Settings
from tests.conftest import Databases
from tests.e2e.conftest import app_settings
from tests.e2e.served import ServedApi

# About 60 s for the whole module on this project's 2-core machine.
EXAMPLES_PER_OPERATION: Final = 15
ROLES: Final = re.compile(r"\*\*Roles:\*\* ([a-z, ]+)")
SIGN_OUT: Final = ("POST", "/api/v1/auth/logout")
LIVE: Final = "/api/v1/events/live"
CHECKS: Final = [not_a_server_error, status_code_conformance, response_schema_conformance]

FIGURES: Counter[str] = Counter()


def _openapi() -> dict[str, Any]:
    # create_app connects to nothing until its lifespan starts: the document needs no server.
    unused = Settings(
        database_url="postgresql://unused", nats_url="nats://unused", jwt_secret="x" * 32
    )
    document: dict[str, Any] = create_app(unused).openapi_schema.to_schema()
    return document


OPENAPI: Final = _openapi()
schema = schemathesis.openapi.from_dict(OPENAPI).exclude(path=LIVE)


@pytest.fixture(scope="module")
async def served_settings(databases: Databases, nats_url: str) -> Settings:
    # Limits out of the way, so the cases reach the routes rather than a 429.
    return app_settings(await databases.create("schemathesis"), nats_url)


@pytest.fixture(scope="module")
def served(served_settings: Settings, request: pytest.FixtureRequest) -> Iterator[ServedApi]:
    server = ServedApi(create_app(served_settings), served_settings).start()
    yield server
    server.stop()
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None and FIGURES["cases"]:
        statuses = ", ".join(
            f"{name.removeprefix('status ')}: {count}"
            for name, count in sorted(FIGURES.items())
            if name.startswith("status ")
        )
        with capture.global_and_fixture_disabled():
            reporter.write_line(
                f"\nschemathesis: operations={FIGURES['operations']} cases={FIGURES['cases']} "
                f"failures={FIGURES['failures']} (answers by status: {statuses})"
            )


@pytest.fixture(scope="module")
def tokens(served: ServedApi) -> dict[str, str]:
    """An access token per role, and one more for signing out."""
    found = {role.value: served.token(role)[1] for role in Role}
    found["sign-out"] = served.token(Role.TRADER)[1]
    return found


def test_the_served_document_is_the_one_tested(served: ServedApi) -> None:
    response = httpx.get(f"{served.url}/schema/openapi.json", timeout=30.0)
    assert response.status_code == 200
    assert response.json() == OPENAPI


def test_every_operation_but_the_live_stream_is_tested() -> None:
    tested = {
        (operation.method.upper(), operation.path)
        for result in schema.get_all_operations()
        for operation in [result.ok()]
    }
    documented = {
        (method.upper(), path)
        for path, item in OPENAPI["paths"].items()
        for method in item
        if method in {"get", "post", "put", "patch", "delete"}
    }
    assert documented - tested == {("GET", LIVE)}
    assert len(tested) >= 25


@schema.parametrize()
@settings(
    max_examples=EXAMPLES_PER_OPERATION,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_the_api_answers_as_documented(
    case: Any, served: ServedApi, tokens: dict[str, str]
) -> None:
    operation = (case.operation.method.upper(), case.operation.path)
    if FIGURES[f"seen {operation}"] == 0:
        FIGURES["operations"] += 1
    FIGURES[f"seen {operation}"] += 1
    headers = {}
    token = _token_for(case.operation.definition.raw, operation, tokens)
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    FIGURES["cases"] += 1
    response = case.call(base_url=served.url, headers=headers)
    FIGURES[f"status {response.status_code}"] += 1
    try:
        case.validate_response(response, checks=CHECKS, headers=headers)
    except Exception:
        FIGURES["failures"] += 1
        raise


def _token_for(
    definition: dict[str, Any], operation: tuple[str, str], tokens: dict[str, str]
) -> str | None:
    if operation == SIGN_OUT:
        return tokens["sign-out"]
    roles = ROLES.search(definition.get("description", ""))
    if roles is None:
        return None  # A public route.
    return tokens[roles.group(1).split(",")[0].strip()]
