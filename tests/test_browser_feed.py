"""Real Chromium: how the page's feed asks for items, and that no item is lost to a race.

A live `activity` event makes the page fetch that item's cacheable URL; a burst, a gap or a
stream (re)open is one `?after=<cursor>` list. The cursor moves only on list answers: if it
moved on the page's own POST answer, another visitor's item committed just before one's own
would be skipped by the next `?after=`. Items are held in flight behind the feed's own
advisory lock, taken by the test, so the commit order is the one the test chooses.
"""

import asyncio
import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import pytest
import pytest_asyncio
from playwright.async_api import Locator, Request, expect
from support import database
from support.browser import ServerFactory, Tab, Web
from support.server import AppServer
from support.visitors import Visitor

from app.services.feed import FEED_LOCK_KEY

pytest_plugins = ("support.browser_plugin",)
pytestmark = [pytest.mark.browser, pytest.mark.asyncio(loop_scope="module")]

ITEM_URL = re.compile(r"/fragments/activity/(\d+)$")
WAITERS = (
    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
    "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
)


@pytest.fixture(scope="module")
def server(module_server: ServerFactory) -> AppServer:
    return module_server(workers=2)


def _tag() -> str:
    return uuid.uuid4().hex[:8]


class FeedLock:
    """The feed's advisory lock, held by the test: posts wait behind it, in arrival order."""

    def __init__(self, connection: asyncpg.Connection) -> None:
        self.connection = connection
        self.transaction = connection.transaction()
        self.released = False

    async def take(self) -> None:
        await self.transaction.start()
        await self.connection.execute("SELECT pg_advisory_xact_lock($1)", FEED_LOCK_KEY)

    async def waiting(self, count: int, timeout: float = 10) -> None:
        async with asyncio.timeout(timeout):
            while await self.connection.fetchval(WAITERS) < count:
                await asyncio.sleep(0.05)

    async def release(self) -> None:
        """The waiting posts then commit one by one, in the order they queued."""
        await self.transaction.commit()
        self.released = True


@pytest_asyncio.fixture(loop_scope="module")
async def lock_connection(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """One connection for the test's feed locks (closing it releases a lock still held)."""
    connection = await database.connect(database_url)
    try:
        yield connection
    finally:
        await connection.close()


@asynccontextmanager
async def feed_lock(connection: asyncpg.Connection) -> AsyncIterator[FeedLock]:
    lock = FeedLock(connection)
    await lock.take()
    try:
        yield lock
    finally:
        if not lock.released:
            await lock.transaction.rollback()


async def _shown_after_warm_up(tab: Tab, other: Visitor) -> None:
    """The other visitor's first write also records them (a "joined" item): get it shown."""
    answer = await other.post(f"warm-up {_tag()}")
    assert answer.status_code == 201, answer.text
    await tab.wait_items([answer.json()["id"]])


async def test_another_visitors_items_committed_just_before_ones_own_are_shown(
    web: Web, server: AppServer, lock_connection: asyncpg.Connection
) -> None:
    a = await web.open(server.base_url, "a")
    async with await Visitor.arrive(server.base_url) as other:
        await _shown_after_warm_up(a, other)
        for round_ in range(4):
            async with feed_lock(lock_connection) as lock:
                theirs = [
                    asyncio.create_task(other.post(f"theirs {round_}.{i} {_tag()}"))
                    for i in range(2)
                ]
                await lock.waiting(2)
                answer = asyncio.ensure_future(
                    a.page.wait_for_event(
                        "response",
                        lambda r: r.url.endswith("/activity") and r.request.method == "POST",
                        timeout=20_000,
                    )
                )
                await a.page.fill("#post-message", f"mine {round_} {_tag()}")
                await a.page.click("#post-submit")
                await lock.waiting(3)  # ours is last in line
                await lock.release()
                response = await answer
            assert response.status == 201, await response.text()
            found = re.search(r'id="activity-(\d+)"', await response.text())
            assert found
            mine = int(found.group(1))
            their_ids = [(await task).json()["id"] for task in theirs]
            assert max(their_ids) < mine, "the lock did not order the commits"
            await a.wait_items([*their_ids, mine])
    await web.finish(a)


async def test_a_live_item_is_fetched_by_its_url_and_a_burst_or_replay_by_list(
    web: Web, server: AppServer, lock_connection: asyncpg.Connection
) -> None:
    context = await web.context("a")
    asked: list[str] = []

    def record(request: Request) -> None:
        if "/fragments/activity" in request.url:
            asked.append(request.url)

    context.on("request", record)
    a = await web.open(server.base_url, "a", context=context)

    def lists() -> list[str]:
        return [u for u in asked if "/fragments/activity?after=" in u]

    def items() -> list[int]:
        return [int(m.group(1)) for u in asked if (m := ITEM_URL.search(u))]

    async with await Visitor.arrive(server.base_url) as other:
        await _shown_after_warm_up(a, other)
        assert lists(), "the stream's open is caught up with one list"

        # One event: its item's own URL, the same for every page; no list.
        asked.clear()
        answer = await other.post(f"single {_tag()}")
        single = answer.json()["id"]
        await a.wait_items([single])
        assert items() == [single], asked
        assert not lists(), asked

        # A burst: twelve posts held behind the feed lock, then committed back to back.
        asked.clear()
        async with feed_lock(lock_connection) as lock:
            burst = [asyncio.create_task(other.post(f"burst {i} {_tag()}")) for i in range(12)]
            await lock.waiting(len(burst))
            await lock.release()
            burst_ids = [(await task).json()["id"] for task in burst]
        await a.wait_items(burst_ids, timeout=15)
        assert lists(), f"a burst is fetched as a list: {asked}"
        assert len(items()) < len(burst_ids), f"not one fetch per item: {asked}"

        # A replay: a fresh stream from the page's cursor is caught up with a list.
        asked.clear()
        await a.page.evaluate("window.ripple.reconnect()")
        await a.page.wait_for_function(
            "() => document.getElementById('status').dataset.state === 'live'", timeout=15_000
        )
        async with asyncio.timeout(10):
            while not lists():
                await asyncio.sleep(0.05)
        shown = await a.feed_ids()
        assert shown == sorted(shown, reverse=True)
        assert len(shown) == len(set(shown))
    await web.finish(a)


async def _top(locator: Locator) -> float:
    box = await locator.bounding_box()
    assert box is not None, "not rendered"
    return box["y"]


async def test_older_pages_and_new_items_while_scrolled_down(web: Web, server: AppServer) -> None:
    async with await Visitor.arrive(server.base_url) as other:
        for i in range(60):  # more than one page (50)
            assert (await other.post(f"filler {i} {_tag()}")).status_code == 201
        a = await web.open(server.base_url, "a")
        older = a.page.locator("#feed-older")
        await expect(older).to_be_visible()
        first_page = await a.feed_ids()
        assert len(first_page) >= 50  # the page's 50, and maybe its own "joined"

        await older.click()
        await a.page.wait_for_function(
            "(n) => Number(document.querySelector('#feed > li:last-child').dataset.id) < n",
            arg=min(first_page),
            timeout=10_000,
        )
        shown = await a.feed_ids()
        assert set(first_page) <= set(shown)
        assert min(shown) < min(first_page), "older items go below the ones shown"
        assert shown == sorted(set(shown), reverse=True)

        # The reader scrolls down; a new item must not move what they are reading.
        await a.page.eval_on_selector("#feed-scroll", "el => { el.scrollTop = 400; }")
        reading = a.item((await a.feed_ids())[10])
        top_before = await _top(reading)
        answer = await other.post(f"while you read {_tag()}")
        new_id = answer.json()["id"]
        await a.wait_items([new_id])
        badge = a.page.locator("#feed-new")
        await expect(badge).to_be_visible()
        await expect(badge).to_have_text(re.compile(r"^[1-9]\d* new$"))
        top_after = await _top(reading)
        assert abs(top_after - top_before) < 2, (top_before, top_after)

        await badge.click()
        await expect(badge).to_be_hidden()
        assert (await a.feed_ids())[0] == new_id
    await web.finish(a)
