"""The README's screenshot: a populated page (a few posts, two people online) at desktop width,
and the same page at phone width (into test-artifacts/ only).

``docs/screenshot.png`` is written only when it is missing or ``RIPPLE_UPDATE_SCREENSHOT=1``, so
ordinary runs do not change a committed file. The page is checked either way.
"""

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.async_api import expect
from support import database
from support.browser import ServerFactory, Tab, Web
from support.paths import REPO_ROOT

pytest_plugins = ("support.browser_plugin",)
pytestmark = [pytest.mark.browser, pytest.mark.asyncio(loop_scope="module")]

README_SCREENSHOT = REPO_ROOT / "docs" / "screenshot.png"

CONVERSATION = (
    ("ada", "Morning! Is this counter really shared by everyone on the page?"),
    ("grace", "It is. Press +1 and watch it change in my window too."),
    ("ada", "Nice, and new posts show up at the top without a reload."),
    ("grace", "The badge up top says Live, so the stream is connected."),
)


@pytest.fixture
def empty_database(admin_url: str) -> Iterator[str]:
    """A database of its own, so the picture shows only what this test wrote."""
    url = asyncio.run(database.create_database(admin_url))
    try:
        database.migrate(url)
        yield url
    finally:
        asyncio.run(database.drop_database(url, admin_url))


async def _settle(tab: Tab) -> None:
    """No highlight of new items, no hover and no focus ring left in the picture."""
    await tab.page.wait_for_function("() => !document.querySelector('.is-new')", timeout=10_000)
    await tab.page.evaluate("document.activeElement?.blur()")
    await tab.page.mouse.move(0, 0)


async def test_readme_screenshot(web: Web, app_server: ServerFactory, empty_database: str) -> None:
    server = await asyncio.to_thread(app_server, database_url=empty_database, workers=1)
    ada = await web.open(server.base_url, "ada")
    grace = await web.open(server.base_url, "grace")
    people = {"ada": ada, "grace": grace}
    assert await ada.rename("Ada") == 200
    assert await grace.rename("Grace") == 200
    for _ in range(12):
        await ada.page.click("#counter-increment")
    posted = [await people[who].post(text) for who, text in CONVERSATION]

    await ada.wait_counter(12)
    await ada.wait_items(posted)
    await expect(ada.page.locator("#presence li.person")).to_have_count(2, timeout=10_000)
    await expect(ada.page.locator(".presence-count strong")).to_have_text("2")
    await _settle(ada)
    picture = await web.screenshot(ada, "desktop")
    if os.environ.get("RIPPLE_UPDATE_SCREENSHOT") == "1" or not README_SCREENSHOT.exists():
        README_SCREENSHOT.parent.mkdir(exist_ok=True)
        README_SCREENSHOT.write_bytes(Path(picture).read_bytes())

    phone = await web.open(
        server.base_url, "phone", viewport={"width": 390, "height": 844}, is_mobile=True
    )
    await phone.wait_items(posted)
    await _settle(phone)
    assert await phone.page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"), (
        "the page scrolls sideways at phone width"
    )
    await web.screenshot(phone, "phone", full_page=True)
    await web.finish(ada)
