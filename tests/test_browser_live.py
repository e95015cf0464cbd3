"""Real Chromium against the real server: what visitors see live, in separate browser contexts.

Two instances share the database for the whole module: ``one`` (2 workers) and ``two``
(1 worker). Tests only assert on what they caused themselves (the counter relative to where
it started, their own visitors and items), so they can share the servers.
"""

import asyncio
import itertools
import re
import time
import uuid

import pytest
from playwright.async_api import expect
from support.browser import ServerFactory, Tab, Web
from support.probes import online_ids
from support.server import AppServer
from support.visitors import Visitor

pytest_plugins = ("support.browser_plugin",)
pytestmark = [pytest.mark.browser, pytest.mark.asyncio(loop_scope="module")]

IS_YOU = re.compile(r"\bis-you\b")


@pytest.fixture(scope="module")
def one(module_server: ServerFactory) -> AppServer:
    return module_server(workers=2)


@pytest.fixture(scope="module")
def two(module_server: ServerFactory) -> AppServer:
    return module_server(workers=1)


def _tag() -> str:
    return uuid.uuid4().hex[:8]


async def _settled(tab: Tab, item_id: int) -> None:
    """The page shows ``item_id``. (Its cursor moves only on list answers, so a single live
    item, fetched by its own URL, leaves the cursor where it was.)"""
    await tab.wait_items([item_id])


def _descending(ids: list[int]) -> bool:
    return all(a > b for a, b in itertools.pairwise(ids))


async def test_counter_reaches_the_other_visitor_and_never_steps_back(
    web: Web, one: AppServer
) -> None:
    a = await web.open(one.base_url, "a")
    b = await web.open(one.base_url, "b")
    start = await a.counter_value()
    await b.wait_counter(start)
    await a.record_counter()
    await b.record_counter()

    await a.page.click("#counter-increment")
    await b.wait_counter(start + 1)
    await a.wait_counter(start + 1)

    # Real mouse clicks, as fast as the input pipeline takes them (no actionability checks).
    box = await a.page.locator("#counter-increment").bounding_box()
    assert box is not None
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    for _ in range(50):
        await a.page.mouse.click(x, y)
    await a.wait_counter(start + 51, timeout=30)
    await b.wait_counter(start + 51, timeout=30)

    for tab in (a, b):
        seen = await tab.counter_history()
        assert seen[0] == start
        assert seen[-1] == start + 51
        assert seen == sorted(seen), f"{tab.label}'s counter stepped back: {seen}"
    await expect(a.page.locator("#counter-error")).to_be_empty()
    await web.finish(b)


async def test_presence_join_rename_and_leave(web: Web, one: AppServer) -> None:
    a = await web.open(one.base_url, "a")
    b = await web.open(one.base_url, "b")
    a_id, b_id = await a.visitor_id(), await b.visitor_id()

    await expect(a.person(b_id)).to_be_visible(timeout=10_000)
    await expect(b.person(a_id)).to_be_visible(timeout=10_000)
    await expect(a.person(a_id)).to_have_class(IS_YOU)
    await expect(a.person(b_id)).not_to_have_class(IS_YOU)
    await expect(b.person(b_id)).to_have_class(IS_YOU)

    name = f"Bea {_tag()}"
    assert await b.rename(name) == 200
    await expect(a.person(b_id).locator(".person-name")).to_have_text(name, timeout=10_000)
    await expect(b.person(b_id).locator(".person-name")).to_have_text(name)
    await expect(b.page.locator("#name-error")).to_be_empty()
    await web.screenshot(a, "both-online")

    await b.page.close()
    await expect(a.person(b_id)).to_have_count(0, timeout=15_000)
    await expect(a.person(a_id)).to_be_visible()
    await web.finish(a)


async def test_posts_arrive_once_in_order_and_as_text(web: Web, one: AppServer) -> None:
    a = await web.open(one.base_url, "a")
    b = await web.open(one.base_url, "b")
    b_id = await b.visitor_id()
    b_name = await b.page.input_value("#name-input")

    text = f"hello from b {_tag()}"
    item_id = await b.post(text)
    await expect(a.item(item_id)).to_be_visible(timeout=10_000)
    await _settled(a, item_id)
    await _settled(b, item_id)
    assert (await a.feed_ids())[0] == item_id, "a new item goes on top"
    for tab in (a, b):
        await expect(tab.page.locator("#feed > li", has_text=text)).to_have_count(1)
        assert await tab.item(item_id).get_attribute("data-author-id") == b_id
        await expect(tab.item(item_id).locator(".item-who")).to_have_text(b_name)
        await expect(tab.item(item_id).locator(".item-body")).to_have_text(text)
    await expect(b.item(item_id)).to_have_class(IS_YOU)
    await expect(a.item(item_id)).not_to_have_class(IS_YOU)
    await expect(b.page.locator("#post-message")).to_have_value("")

    nasty = (
        f"<script>window.__pwned = 1</script><b>bold</b> {_tag()} "
        '<img src=x onerror="alert(1)"> & "quotes" </li><li>'
    )
    nasty_id = await b.post(nasty)
    for tab in (a, b):
        body = tab.item(nasty_id).locator(".item-body")
        await expect(body).to_be_visible(timeout=10_000)
        assert await body.evaluate("el => el.textContent") == nasty
        assert await body.evaluate("el => el.childElementCount") == 0
        assert await tab.page.evaluate("window.__pwned === undefined")
        assert await tab.page.locator("#feed img, #feed b, #feed script").count() == 0
    assert not web.dialogs

    # A burst from a third visitor over plain HTTP: every item once, newest first.
    async with await Visitor.arrive(one.base_url) as other:
        answers = await asyncio.gather(*(other.post(f"burst {i} {_tag()}") for i in range(20)))
    assert all(r.status_code == 201 for r in answers)
    burst = [r.json()["id"] for r in answers]
    for tab in (a, b):
        await tab.wait_items(burst, timeout=15)
        await _settled(tab, max(burst))
        shown = await tab.feed_ids()
        assert _descending(shown), f"{tab.label}'s feed is out of order: {shown}"
        assert set(burst) <= set(shown)
    await web.finish(a)


async def test_background_tab_stays_connected_and_present(web: Web, one: AppServer) -> None:
    a = await web.open(one.base_url, "a")
    b = await web.open(one.base_url, "b")
    a_id = await a.visitor_id()
    await expect(b.person(a_id)).to_be_visible(timeout=10_000)

    await a.hide()
    assert await a.page.evaluate("document.hidden && document.visibilityState === 'hidden'")
    # Pings come every 2 s in tests and presence expires after 6 s: four more pings prove the
    # stream kept running past the point where a paused tab would have dropped out.
    pings = await a.event_count("ping")
    await a.wait_events("ping", pings + 4, timeout=20)
    await a.wait_live(timeout=1)
    assert a_id in await online_ids(one.base_url)
    await expect(b.person(a_id)).to_be_visible()

    start = await a.counter_value()
    item_id = await b.post(f"are you there? {_tag()}")
    await b.page.click("#counter-increment")
    await expect(a.item(item_id)).to_be_visible(timeout=10_000)
    await a.wait_counter(start + 1)
    await web.finish(a)


async def test_page_on_one_instance_sees_writes_through_another(
    web: Web, one: AppServer, two: AppServer
) -> None:
    a = await web.open(one.base_url, "a")
    b = await web.open(two.base_url, "b")
    a_id, b_id = await a.visitor_id(), await b.visitor_id()
    await expect(a.person(b_id)).to_be_visible(timeout=10_000)
    await expect(b.person(a_id)).to_be_visible(timeout=10_000)

    item_id = await b.post(f"through instance two {_tag()}")
    await expect(a.item(item_id)).to_be_visible(timeout=10_000)
    start = await b.counter_value()
    await b.page.click("#counter-increment")
    await a.wait_counter(start + 1)
    name = f"Ann {_tag()}"
    assert await a.rename(name) == 200
    await expect(b.person(a_id).locator(".person-name")).to_have_text(name, timeout=10_000)
    await web.finish(a)


async def _leaders(tabs: list[Tab], timeout: float = 10) -> list[Tab]:
    """Wait until exactly one of ``tabs`` leads the stream; return the leaders seen."""
    deadline = time.monotonic() + timeout
    while True:
        roles = [await tab.role() for tab in tabs]
        leaders = [tab for tab, role in zip(tabs, roles, strict=True) if role == "leader"]
        if len(leaders) == 1 or time.monotonic() > deadline:
            return leaders
        await asyncio.sleep(0.1)


async def test_ten_tabs_share_one_stream_and_a_new_leader_takes_over(
    web: Web, one: AppServer
) -> None:
    writer = await web.open(one.base_url, "writer")
    context = await web.context("tabs")
    streams: list[str] = []
    context.on("request", lambda r: streams.append(r.url) if "/events" in r.url else None)
    # The first tab leads; the other nine open together.
    first = await web.open(one.base_url, "tab0", context=context)
    others = await asyncio.gather(
        *(web.open(one.base_url, f"tab{i}", context=context) for i in range(1, 10))
    )
    tabs = [first, *others]

    leaders = await _leaders(tabs)
    assert len(leaders) == 1, [await tab.role() for tab in tabs]
    leader = leaders[0]
    assert [await tab.role() for tab in tabs].count("follower") == 9
    assert len(streams) == 1, f"one stream for ten tabs, not {streams}"

    item_id = await writer.post(f"to all ten {_tag()}")
    for tab in tabs:
        await expect(tab.item(item_id)).to_be_visible(timeout=10_000)
    await web.screenshot(tabs[-1], "follower")

    await leader.page.close()
    rest = [tab for tab in tabs if tab is not leader]
    leaders = await _leaders(rest)
    assert len(leaders) == 1, [await tab.role() for tab in rest]
    await leaders[0].wait_live()

    start = await writer.counter_value()
    item_id = await writer.post(f"to the other nine {_tag()}")
    await writer.page.click("#counter-increment")
    for tab in rest:
        await expect(tab.item(item_id)).to_be_visible(timeout=10_000)
        await tab.wait_counter(start + 1)
        await tab.wait_live(timeout=5)
    await web.finish(rest[0])
