"""At phone width the populated page fits the screen: no sideways scrolling.

(The README's desktop screenshot is made by scripts/screenshot, not by a test.)
"""

import pytest
from playwright.async_api import expect
from support.browser import ServerFactory, Web

pytest_plugins = ("support.browser_plugin",)
pytestmark = [pytest.mark.browser, pytest.mark.asyncio(loop_scope="module")]

POSTS = (
    "Morning! Is this counter really shared by everyone on the page?",
    "A-very-long-word-without-spaces-that-must-wrap-rather-than-widen-the-page-at-all",
)


async def test_the_populated_page_fits_a_phone_screen(
    web: Web, module_server: ServerFactory
) -> None:
    server = module_server(workers=1)
    ada = await web.open(server.base_url, "ada")
    assert await ada.rename("Ada with a rather long display name") == 200
    await ada.page.click("#counter-increment")
    posted = [await ada.post(text) for text in POSTS]
    phone = await web.open(
        server.base_url, "phone", viewport={"width": 390, "height": 844}, is_mobile=True
    )
    await phone.wait_items(posted)
    await expect(phone.page.locator("#presence li.person")).to_have_count(2, timeout=10_000)
    fits = await phone.page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    assert fits, "the page scrolls sideways at phone width"
    await web.screenshot(phone, "phone", full_page=True)
    await web.finish(ada)
