"""Make the README's screenshot, docs/screenshot.png: a populated page (a few posts, two
people online) at desktop width, from a real server on a throwaway database.

Run it with scripts/screenshot. It reuses the test harness (tests/support): a database on
the PostgreSQL at RIPPLE_TEST_ADMIN_URL, the app in a subprocess, Debian's Chromium.
"""

import asyncio
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from playwright.async_api import async_playwright, expect  # noqa: E402
from support import database  # noqa: E402
from support.browser import CHROMIUM, CHROMIUM_ARGS, Tab, Web  # noqa: E402
from support.server import AppServer  # noqa: E402

SCREENSHOT = ROOT / "docs" / "screenshot.png"
CONVERSATION = (
    ("ada", "Morning! Is this counter really shared by everyone on the page?"),
    ("grace", "It is. Press +1 and watch it change in my window too."),
    ("ada", "Nice, and new posts show up at the top without a reload."),
    ("grace", "The badge up top says Live, so the stream is connected."),
)


async def _settle(tab: Tab) -> None:
    """No highlight of new items, no hover and no focus ring left in the picture."""
    await tab.page.wait_for_function("() => !document.querySelector('.is-new')", timeout=10_000)
    await tab.page.evaluate("document.activeElement?.blur()")
    await tab.page.mouse.move(0, 0)


async def _picture(base_url: str) -> Path:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        web = Web(browser, "screenshot")
        try:
            ada = await web.open(base_url, "ada")
            grace = await web.open(base_url, "grace")
            people = {"ada": ada, "grace": grace}
            assert await ada.rename("Ada") == 200
            assert await grace.rename("Grace") == 200
            for _ in range(12):
                await ada.page.click("#counter-increment")
            posted = [await people[who].post(text) for who, text in CONVERSATION]
            await ada.wait_counter(12)
            await ada.wait_items(posted)
            await expect(ada.page.locator("#presence li.person")).to_have_count(2)
            await _settle(ada)
            return Path(await web.screenshot(ada, "desktop"))
        finally:
            await web.close()
            await browser.close()


def main() -> int:
    admin = database.admin_url()
    url = asyncio.run(database.create_database(admin))
    server = None
    try:
        database.migrate(url)
        server = AppServer(url, workers=1).start()
        SCREENSHOT.write_bytes(asyncio.run(_picture(server.base_url)).read_bytes())
    finally:
        if server is not None:
            server.stop()
        asyncio.run(database.drop_database(url, admin))
    print(f"wrote {SCREENSHOT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
