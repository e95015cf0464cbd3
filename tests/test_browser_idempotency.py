"""Real Chromium: the page sends an `Idempotency-Key` on every write and keeps a form's key
until the write is settled, so a second click after a refused attempt repeats that write
(never a second one), while a new message or a new +1 gets a new key."""

import asyncio
import uuid
from collections.abc import Callable

import pytest
from playwright.async_api import Request, expect
from support import database
from support.browser import ServerFactory, Tab, Web
from support.cluster import PgCluster
from support.probes import eventually, health
from support.server import AppServer

from app.services.feed import FEED_LOCK_KEY

pytest_plugins = ("support.browser_plugin",)
pytestmark = [pytest.mark.browser, pytest.mark.asyncio(loop_scope="module")]


@pytest.fixture(scope="module")
def limited(module_server: ServerFactory) -> AppServer:
    """One post per visitor per minute, so a second post is refused (429) for real."""
    return module_server(env={"RATE_LIMIT_PER_MINUTE": "1"}, workers=1)


def _tag() -> str:
    return uuid.uuid4().hex[:8]


class SentWrites:
    """Every POST the page sends to one path, as the browser sent it."""

    def __init__(self, tab: Tab, path: str) -> None:
        self.requests: list[Request] = []
        self.path = path
        tab.page.on("request", self._seen)

    def _seen(self, request: Request) -> None:
        if request.method == "POST" and request.url.endswith(self.path):
            self.requests.append(request)

    async def keys(self) -> list[str | None]:
        return [await r.header_value("idempotency-key") for r in self.requests]


async def _submit(tab: Tab, status: int) -> None:
    """Click Post and wait for the answer, which must have ``status``."""
    async with tab.page.expect_response(
        lambda r: r.url.endswith("/activity") and r.request.method == "POST"
    ) as answer:
        await tab.page.click("#post-submit")
    response = await answer.value
    assert response.status == status, await response.text()


async def _rows(database_url: str, body: str) -> int:
    return int(
        await database.fetchval(database_url, "SELECT count(*) FROM activity WHERE body = $1", body)
    )


async def test_a_second_click_after_a_refused_post_repeats_it_with_the_same_key(
    web: Web, limited: AppServer, database_url: str
) -> None:
    web.allow_network_errors()  # the 429 is logged by the browser as a failed resource
    tab = await web.open(limited.base_url, "a")
    visitor_id = await tab.visitor_id()
    posts = SentWrites(tab, "/activity")

    first = f"first {_tag()}"
    await tab.page.fill("#post-message", first)
    await _submit(tab, 201)

    second = f"second {_tag()}"
    await tab.page.fill("#post-message", second)
    await _submit(tab, 429)
    await expect(tab.page.locator("#post-error")).to_contain_text("Too many requests")
    await expect(tab.page.locator("#post-message")).to_have_value(second)  # nothing lost

    # The minute passes (its counts are gone); the person clicks Post again.
    await database.execute(database_url, "DELETE FROM rate_buckets WHERE key LIKE $1", "v:%")
    await database.execute(database_url, "DELETE FROM rate_buckets WHERE key LIKE $1", "ip:%")
    await _submit(tab, 201)
    await expect(tab.page.locator("#post-error")).to_be_empty()

    keys = await posts.keys()
    assert len(keys) == 3
    assert all(keys), f"a post went without a key: {keys}"
    assert keys[0] != keys[1], "a new message must get a new key"
    assert keys[2] == keys[1], "the second click after a 429 must repeat the same write"
    assert await _rows(database_url, first) == 1
    assert await _rows(database_url, second) == 1

    # The same text posted again on purpose, after it was answered, is a new write.
    await database.execute(database_url, "DELETE FROM rate_buckets WHERE key LIKE $1", "v:%")
    await database.execute(database_url, "DELETE FROM rate_buckets WHERE key LIKE $1", "ip:%")
    await tab.page.fill("#post-message", second)
    await _submit(tab, 201)
    keys = await posts.keys()
    assert keys[3] not in keys[:3]
    assert await _rows(database_url, second) == 2
    recorded = await database.fetchval(
        database_url,
        "SELECT count(*) FROM idempotency_keys WHERE visitor_id = $1 AND key = ANY($2)",
        uuid.UUID(visitor_id),
        keys,
    )
    assert recorded == 3  # the refused attempt committed nothing, not even its key
    await web.finish(tab)


async def test_each_click_on_plus_one_has_its_own_key(web: Web, limited: AppServer) -> None:
    tab = await web.open(limited.base_url, "b")
    increments = SentWrites(tab, "/counter/increment")
    start = await tab.counter_value()
    for _ in range(3):
        await tab.page.click("#counter-increment")
    await tab.wait_counter(start + 3)
    keys = await increments.keys()
    assert len(keys) == 3
    assert all(keys), keys
    assert len(set(keys)) == 3, keys
    await web.finish(tab)


async def test_rename_sends_a_key_and_a_new_name_gets_a_new_one(
    web: Web, limited: AppServer, database_url: str
) -> None:
    tab = await web.open(limited.base_url, "c")
    renames = SentWrites(tab, "/me")
    await database.execute(database_url, "DELETE FROM rate_buckets WHERE key LIKE $1", "ip:%")
    assert await tab.rename(f"Kim {_tag()}") == 200
    await database.execute(database_url, "DELETE FROM rate_buckets")
    assert await tab.rename(f"Kai {_tag()}") == 200
    keys = await renames.keys()
    assert len(keys) == 2
    assert all(keys), keys
    assert keys[0] != keys[1]
    await web.finish(tab)


@pytest.mark.slow
async def test_clicks_after_a_database_outage_repeat_the_same_write(
    web: Web, app_server: ServerFactory, pg_cluster: Callable[[], PgCluster]
) -> None:
    """The database goes away for real: Post answers 503 and the message stays; once the
    database is back, clicking Post again (as often as it takes) sends the same key and
    writes the message once."""
    web.allow_network_errors()
    cluster = await asyncio.to_thread(pg_cluster)
    await database.execute(cluster.url, "CREATE DATABASE ripple")
    url = cluster.url_for("ripple")
    await asyncio.to_thread(database.migrate, url)
    server = await asyncio.to_thread(app_server, database_url=url, workers=1)
    tab = await web.open(server.base_url, "a")
    posts = SentWrites(tab, "/activity")
    message = f"through an outage {_tag()}"
    await tab.page.fill("#post-message", message)

    await asyncio.to_thread(cluster.stop, "fast")
    await _submit(tab, 503)
    await expect(tab.page.locator("#post-error")).to_contain_text("busy")
    await expect(tab.page.locator("#post-message")).to_have_value(message)
    await asyncio.to_thread(cluster.start)
    await eventually(lambda: health(server.base_url), lambda h: h[0] == 200, 30)

    statuses = []
    for _ in range(5):  # a pooled connection from before the restart may fail one more time
        async with tab.page.expect_response(
            lambda r: r.url.endswith("/activity") and r.request.method == "POST"
        ) as answer:
            await tab.page.click("#post-submit")
        statuses.append((await answer.value).status)
        if statuses[-1] != 503:
            break
    assert statuses[-1] == 201, statuses
    keys = await posts.keys()
    assert keys[0], keys
    assert set(keys) == {keys[0]}, f"every click of this one message must reuse its key: {keys}"
    assert await _rows(url, message) == 1
    await expect(tab.feed_items.filter(has_text=message)).to_have_count(1, timeout=10_000)
    await web.finish(tab)


@pytest.fixture(scope="module")
def unlimited(module_server: ServerFactory) -> AppServer:
    return module_server(workers=2)


async def test_a_post_that_timed_out_and_committed_later_is_not_doubled_by_the_retry(
    web: Web, unlimited: AppServer, database_url: str
) -> None:
    """The fault found, in the browser: the database holds the post until the page gives up,
    then commits it; the person's next clicks are told it is still being saved, then get the
    committed answer, and the feed has the message once."""
    web.allow_network_errors()
    web.allow_console(r"htmx:error: timeout")  # htmx logs the page giving up
    tab = await web.open(unlimited.base_url, "a")
    posts = SentWrites(tab, "/activity")
    message = f"timed out {_tag()}"
    await tab.page.fill("#post-message", message)
    await tab.page.evaluate("htmx.config.defaultTimeout = 1500")  # give up sooner than 60 s
    holder = await database.connect(database_url)
    await holder.execute("SELECT pg_advisory_lock($1)", FEED_LOCK_KEY)  # every post waits
    try:
        await tab.page.click("#post-submit")
        await expect(tab.page.locator("#post-error")).to_contain_text("Network problem")
        await _submit(tab, 409)  # the first attempt is still in flight on the server
        await expect(tab.page.locator("#post-error")).to_contain_text("still being saved")
        assert await _rows(database_url, message) == 0
    finally:
        await holder.close(timeout=5)  # the first attempt commits now
    await eventually(lambda: _rows(database_url, message), lambda n: n == 1, 10)

    await _submit(tab, 201)
    await expect(tab.page.locator("#post-message")).to_have_value("")
    await expect(tab.feed_items.filter(has_text=message)).to_have_count(1, timeout=10_000)
    keys = await posts.keys()
    assert len(keys) == 3
    assert keys[0], keys
    assert set(keys) == {keys[0]}, keys
    assert await _rows(database_url, message) == 1
    await web.finish(tab)
