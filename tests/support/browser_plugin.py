"""Pytest plugin for the browser tests: ``pytest_plugins = ("support.browser_plugin",)``.

- ``browser``: headless Debian Chromium, one per test module. Its fixtures run in the module's
  event loop, so a module marks its tests ``pytest.mark.asyncio(loop_scope="module")``.
- ``web``: a ``support.browser.Web`` for one test, a fresh browser context per visitor; when
  the test fails, every page still open is saved into ``test-artifacts/``.
- ``module_server``: app instances shared by the tests of one module (``app_server`` starts
  them per test), stopped when the module ends.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Generator, Iterator, Mapping

import pytest
import pytest_asyncio
from playwright.async_api import Browser, async_playwright

from .browser import CHROMIUM, CHROMIUM_ARGS, ServerFactory, Web
from .server import AppServer

_REPORTS = pytest.StashKey[dict[str, pytest.TestReport]]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Keep each phase's report on the item, so ``web`` knows whether the test failed."""
    report = yield
    item.stash.setdefault(_REPORTS, {})[report.when] = report
    return report


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield browser
        finally:
            await browser.close()


@pytest_asyncio.fixture(loop_scope="module")
async def web(browser: Browser, request: pytest.FixtureRequest) -> AsyncIterator[Web]:
    session = Web(browser, request.node.name)
    try:
        yield session
    finally:
        reports = request.node.stash.get(_REPORTS, {})
        if any(r.failed for r in reports.values()) or "call" not in reports:
            await session.screenshot_all("failed")
        await session.close()


@pytest.fixture(scope="module")
def module_server(
    database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerFactory]:
    """Start app instances kept for the whole module: ``module_server(env=..., workers=...)``."""
    servers: list[AppServer] = []
    log_root = tmp_path_factory.mktemp("servers")

    def start(env: Mapping[str, str] | None = None, *, workers: int = 2) -> AppServer:
        server = AppServer(
            database_url, env, workers=workers, log_dir=log_root / f"server-{len(servers)}"
        )
        servers.append(server)
        return server.start()

    try:
        yield start
    finally:
        for server in reversed(servers):
            try:
                server.stop()
            except Exception as exc:
                print(f"stopping {server} failed: {exc!r}")
