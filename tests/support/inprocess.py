"""The in-process tier: the app that is served (`create_app(settings)`), driven by Litestar's
test client in the test's own event loop, on the real PostgreSQL.

For request-level behaviour that does not depend on the server process: validation,
rendering, headers the app sets, services. Anything that involves the ASGI server, worker
processes, signals or sockets (proxy headers, header limits, streams, faults) uses the real
server instead (``support.server.AppServer``).
"""

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

from litestar.testing import AsyncTestClient

from app.config import Settings
from app.main import create_app
from app.web.frontdoor import FrontDoor

from .server import FAST_KNOBS

BASE_URL = "http://testserver.local"


def settings_for(database_url: str, env: Mapping[str, str] | None = None) -> Settings:
    """Settings as the test servers get them (support.server), from a fixed environment."""
    return Settings.from_env(
        {
            "DATABASE_URL": database_url,
            "SECRET_KEY": "test",
            "RATE_LIMIT_PER_MINUTE": "0",
            "WEB_CONCURRENCY": "1",
            **FAST_KNOBS,
            **(env or {}),
        }
    )


@asynccontextmanager
async def in_process(
    database_url: str, env: Mapping[str, str] | None = None
) -> AsyncIterator[AsyncTestClient[FrontDoor]]:
    """A started app (its lifespan ran: listener, heartbeat) and a client for it."""
    app = create_app(settings_for(database_url, env))
    async with AsyncTestClient(app=app, base_url=BASE_URL, timeout=10) as client:
        yield client


def csrf_headers(client: AsyncTestClient[FrontDoor]) -> dict[str, str]:
    """The header the page script adds to every write (the cookie a GET set)."""
    return {"x-csrftoken": client.cookies.get("csrftoken") or ""}
