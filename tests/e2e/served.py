"""The API served by uvicorn on a loopback port, in a thread with its own event loop.

Litestar's test client runs each request to completion before it answers, so it cannot
read a stream that never ends (`/events/live`), and schemathesis calls the API with
blocking HTTP. Both talk to this server instead, as any client would. Coroutines that
need the server's loop (creating users on its pool's database) run there through `run`.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
import threading
from collections.abc import Coroutine, Iterator
from typing import Any, Final, TypeVar

import httpx
import uvicorn
from litestar import Litestar

from api.live import end_live_streams
from api.users_admin import create_user
from ledger.domain.user import Role
from ledger.settings import Settings

T = TypeVar("T")

START_TIMEOUT_S: Final = 30.0
STOP_TIMEOUT_S: Final = 30.0
PASSWORD: Final = "correct horse battery staple"


class _Server(uvicorn.Server):
    """uvicorn without signal handlers (it runs off the main thread)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        end_live_streams(self.config.app)  # As `ledger serve` does (ledger/dev.py).
        await super().shutdown(sockets)


class ServedApi:
    """An app served on 127.0.0.1 (a free port) until `stop()`."""

    def __init__(self, app: Litestar, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self._server = _Server(
            uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="served-api", daemon=True)
        self.url = ""

    def _run(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        serving = asyncio.create_task(self._server.serve())
        while not self._server.started and not serving.done():
            await asyncio.wait({serving}, timeout=0.02)
        if self._server.started:
            port = self._server.servers[0].sockets[0].getsockname()[1]
            self.url = f"http://127.0.0.1:{port}"
        self._ready.set()
        await serving

    def start(self) -> ServedApi:
        self._thread.start()
        assert self._ready.wait(START_TIMEOUT_S), "the API did not start"
        assert self.url, "the API failed to start"
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(STOP_TIMEOUT_S)
        assert not self._thread.is_alive(), "the API did not stop"

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on the server's loop and wait for its result."""
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(START_TIMEOUT_S)

    def token(self, role: Role, email: str | None = None) -> tuple[str, str]:
        """A new user of `role` signed in: (user id, access token)."""
        email = email or f"{role.value}-{secrets.token_hex(6)}@example.com"
        with httpx.Client(base_url=self.url, timeout=30.0) as client:
            if role is Role.TRADER:
                registered = client.post(
                    "/api/v1/auth/register", json={"email": email, "password": PASSWORD}
                )
                assert registered.status_code == 201, registered.text
                user_id = str(registered.json()["user_id"])
            else:
                assert self.settings.database_url is not None
                created = create_user(self.settings.database_url, email, PASSWORD, role)
                user_id = str(self.run(created))
            signed_in = client.post(
                "/api/v1/auth/token", json={"email": email, "password": PASSWORD}
            )
            assert signed_in.status_code == 200, signed_in.text
            return user_id, str(signed_in.json()["access_token"])
