"""Real Chromium with JavaScript turned off: the three forms still work as plain HTML forms.

A plain form post is answered 303 back to the page, which then shows the result; a refused
one answers the page itself with the reason in the form's message area, its status kept,
and what the visitor typed still in the field.
"""

import re
import uuid

import pytest
from playwright.async_api import Page, expect
from support.browser import ServerFactory, Web
from support.server import AppServer

pytest_plugins = ("support.browser_plugin",)
pytestmark = [pytest.mark.browser, pytest.mark.asyncio(loop_scope="module")]

LIMIT = 2  # posts per visitor per minute on this module's server


@pytest.fixture(scope="module")
def limited(module_server: ServerFactory) -> AppServer:
    return module_server(env={"RATE_LIMIT_PER_MINUTE": str(LIMIT)}, workers=1)


def _tag() -> str:
    return uuid.uuid4().hex[:8]


async def _no_js_page(web: Web, server: AppServer) -> Page:
    context = await web.browser.new_context(java_script_enabled=False)
    web.contexts.append(context)  # closed by the fixture
    page = await context.new_page()
    await page.goto(f"{server.base_url}/")
    return page


async def _submit(page: Page, path: str, button: str) -> tuple[int, dict[str, str]]:
    """Press ``button``; return the status and headers of the POST to ``path`` (the page
    then shows the 303's target or the refusal page)."""
    async with page.expect_response(
        lambda r: r.request.method == "POST" and r.url.endswith(path)
    ) as answer:
        await page.click(button)
    response = await answer.value
    await page.wait_for_load_state("domcontentloaded")
    return response.status, await response.all_headers()


async def test_post_rename_and_increment_land_on_the_page(web: Web, limited: AppServer) -> None:
    page = await _no_js_page(web, limited)
    assert not await page.evaluate("typeof window.htmx !== 'undefined'")

    text = f"posted without script {_tag()}"
    await page.fill("#post-message", text)
    status, headers = await _submit(page, "/activity", "#post-submit")
    assert status == 303
    assert headers["location"] == "/"
    assert page.url == f"{limited.base_url}/"
    await expect(page.locator("#feed > li").first.locator(".item-body")).to_have_text(text)
    await expect(page.locator("#post-error")).to_be_empty()

    name = f"Plain {_tag()}"
    await page.fill("#name-input", name)
    status, _ = await _submit(page, "/me", "#name-submit")
    assert status == 303
    await expect(page.locator("#name-input")).to_have_value(name)
    # Without a stream the visitor is not online; the feed's rename item shows the name.
    await expect(page.locator("#feed > li.item--renamed .item-who", has_text=name)).to_have_count(1)

    before = int(await page.get_attribute("#counter .counter-value", "data-value") or "-1")
    status, _ = await _submit(page, "/counter/increment", "#counter-increment")
    assert status == 303
    after = int(await page.get_attribute("#counter .counter-value", "data-value") or "-1")
    assert after >= before + 1  # other tests may count too; never less than ours
    await web.screenshot_all("no-js")


async def test_refused_input_shows_the_reason_and_keeps_the_text(
    web: Web, limited: AppServer
) -> None:
    page = await _no_js_page(web, limited)

    await page.fill("#post-message", "   ")  # passes `required`, empty after trimming
    status, _ = await _submit(page, "/activity", "#post-submit")
    assert status == 422
    await expect(page.locator("#post-error")).to_have_text("Write a message first.")

    long_message = "x" * 290 + _tag()
    await page.fill("#post-message", long_message)
    status, _ = await _submit(page, "/activity", "#post-submit")
    assert status == 422
    await expect(page.locator("#post-error")).to_have_text(
        re.compile(r"^Messages can be at most 280 characters; this one has 298\.$")
    )
    await expect(page.locator("#post-message")).to_have_value(long_message)
    await expect(page.locator("#feed")).not_to_contain_text(long_message)

    long_name = "N" * 41
    # The field's maxlength stops typing; a hand-made request is what the server must refuse.
    await page.locator("#name-input").evaluate("el => el.removeAttribute('maxlength')")
    await page.fill("#name-input", long_name)
    status, _ = await _submit(page, "/me", "#name-submit")
    assert status == 422
    await expect(page.locator("#name-error")).to_have_text(
        "Names can be at most 40 characters; this one has 41."
    )
    await expect(page.locator("#name-input")).to_have_value(long_name)
    await expect(page.locator("#post-error")).to_be_empty()


async def test_rate_limited_post_says_too_many_requests(web: Web, limited: AppServer) -> None:
    page = await _no_js_page(web, limited)
    statuses: list[int] = []
    headers: dict[str, str] = {}
    for i in range(LIMIT + 3):
        await page.fill("#post-message", f"limited {i} {_tag()}")
        status, headers = await _submit(page, "/activity", "#post-submit")
        statuses.append(status)
        if status == 429:
            break
    assert statuses[0] == 303, statuses
    assert statuses[-1] == 429, statuses
    assert int(headers["retry-after"]) >= 1
    await expect(page.locator("#post-error")).to_have_text(
        re.compile(r"^Too many requests: try again in \d+ s\.$")
    )
    await expect(page.locator("#post-message")).to_have_value(re.compile(r"^limited \d+ "))
