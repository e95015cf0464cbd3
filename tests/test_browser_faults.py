"""Real Chromium while things go wrong for real: a frozen server, refused and rate-limited
requests, a terminated LISTEN connection, a restarted instance. The page must say what is
happening, keep every widget, and recover by itself."""

import asyncio
import itertools
import os
import re
import signal
import time
import uuid
from collections.abc import Awaitable, Callable
from urllib.parse import urlencode

import pytest
from playwright.async_api import Request, Response, Route, expect
from support import database
from support.browser import ServerFactory, Tab, Web
from support.server import AppServer
from support.sse import SSEClient
from support.visitors import Visitor

pytest_plugins = ("support.browser_plugin",)
pytestmark = [pytest.mark.browser, pytest.mark.asyncio(loop_scope="module")]

TERMINATE_LISTENERS = (
    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
    "WHERE application_name = 'ripple-listener' AND datname = current_database()"
)


@pytest.fixture(scope="module")
def shared(module_server: ServerFactory) -> AppServer:
    return module_server(workers=2)


def _tag() -> str:
    return uuid.uuid4().hex[:8]


def _descending(ids: list[int]) -> bool:
    return all(a > b for a, b in itertools.pairwise(ids))


async def _widgets_intact(tab: Tab) -> None:
    """Counter, presence and feed are still themselves (no error body swapped over them)."""
    page = tab.page
    await expect(page.locator("#counter > .counter-value")).to_have_count(1)
    await expect(page.locator("#presence > .presence")).to_have_count(1)
    await expect(page.locator("#feed-scroll > ol#feed")).to_have_count(1)
    assert await page.evaluate("document.getElementById('live').textContent.trim()") == ""


@pytest.mark.slow
async def test_silent_stream_shows_reconnecting_and_recovers(
    web: Web, app_server: ServerFactory
) -> None:
    web.allow_network_errors()
    server = await asyncio.to_thread(app_server, workers=2)
    a = await web.open(server.base_url, "a")
    b = await web.open(server.base_url, "b")

    # Freeze every process of the instance: sockets stay open, nothing is sent. The page
    # treats 35 s without even a ping as a dead stream.
    group = os.getpgid(server.pid)
    os.killpg(group, signal.SIGSTOP)
    try:
        await a.wait_state("reconnecting", timeout=50)
        await b.wait_state("reconnecting", timeout=15)
        await _widgets_intact(a)
        await web.screenshot(a, "silent")
    finally:
        os.killpg(group, signal.SIGCONT)

    await a.wait_live(timeout=30)
    await b.wait_live(timeout=30)
    async with await Visitor.arrive(server.base_url) as writer:
        item_id = (await writer.post(f"after the thaw {_tag()}")).json()["id"]
        value = (await writer.increment()).json()["value"]
    for tab in (a, b):
        await expect(tab.item(item_id)).to_be_visible(timeout=10_000)
        await tab.wait_counter(value)
    await web.finish(a)


async def test_rejected_post_shows_the_reason_and_keeps_the_feed(
    web: Web, shared: AppServer
) -> None:
    web.allow_console(r"status of 422")
    a = await web.open(shared.base_url, "a")
    item_id = await a.post(f"before the errors {_tag()}")
    before = await a.feed_ids()
    error = a.page.locator("#post-error")

    # The page's own check stops blank and too long messages before they are sent.
    await a.page.fill("#post-message", "   ")
    await a.page.click("#post-submit")
    await expect(error).to_have_text("Write something first.")
    await a.page.evaluate(
        """() => {
            document.getElementById('post-message').value = 'x'.repeat(281);
            document.getElementById('post-form').requestSubmit();
        }"""
    )
    await expect(error).to_have_text(re.compile(r"1 character too long \(280 at most\)"))

    # The server's check, with the page's bypassed: the body is replaced on the way out.
    forced: list[str] = []

    async def rewrite(route: Route, request: Request) -> None:
        headers = {**request.headers, "content-type": "application/x-www-form-urlencoded"}
        headers.pop("content-length", None)
        await route.continue_(post_data=urlencode({"message": forced[-1]}), headers=headers)

    await a.page.route("**/activity", rewrite)
    for bad, reason in (
        ("   \n  ", "Write a message first."),
        ("y" * 281, "Messages can be at most 280 characters; this one has 281."),
    ):
        forced.append(bad)
        async with a.page.expect_response(lambda r: r.url.endswith("/activity")) as answer:
            await a.page.fill("#post-message", "looks fine here")
            await a.page.click("#post-submit")
        assert (await answer.value).status == 422
        await expect(error).to_have_text(reason)
        await expect(a.page.locator("#post-message")).to_have_value("looks fine here")
        assert await a.feed_ids() == before
        await expect(a.item(item_id)).to_be_visible()
        await _widgets_intact(a)
    await a.page.unroute("**/activity")

    await expect(a.page.locator("#feed")).not_to_contain_text("Write a message first")
    good = await a.post(f"fixed {_tag()}")
    await expect(error).to_be_empty()
    await expect(a.item(good)).to_be_visible()
    await web.finish(a)


async def _until_limited(attempt: Callable[[], Awaitable[int]], tries: int = 3) -> list[int]:
    """Statuses of up to ``tries`` calls until one is 429 (the limit counts per clock minute,
    so a pair of requests may straddle a window boundary)."""
    statuses: list[int] = []
    for _ in range(tries):
        status = await attempt()
        statuses.append(status)
        if status == 429:
            break
    return statuses


async def test_rate_limited_writes_say_when_to_retry(web: Web, app_server: ServerFactory) -> None:
    web.allow_console(r"status of 429")
    server = await asyncio.to_thread(app_server, env={"RATE_LIMIT_PER_MINUTE": "1"}, workers=1)
    a = await web.open(server.base_url, "a")
    b = await web.open(server.base_url, "b")
    a_id = await a.visitor_id()

    names = iter(f"Name {i} {_tag()}" for i in range(10))
    last_ok = ""

    async def rename() -> int:
        nonlocal last_ok
        name = next(names)
        status = await a.rename(name)
        if status == 200:
            last_ok = name
        return status

    statuses = await _until_limited(rename)
    assert statuses[0] == 200
    assert statuses[-1] == 429, statuses
    await expect(a.page.locator("#name-error")).to_have_text(
        re.compile(r"^Too many requests\. Try again in \d+ s\.$")
    )
    await expect(a.person(a_id).locator(".person-name")).to_have_text(last_ok)
    # Someone joins: a's presence list refreshes, and the form's message stays. (c is past
    # this address's allowance of one new visitor a minute: listed once they write.)
    c = await web.open(server.base_url, "c")
    await c.post(f"hello {_tag()}")
    await expect(a.person(await c.visitor_id())).to_be_visible(timeout=10_000)
    await expect(a.page.locator("#name-error")).to_have_text(
        re.compile(r"^Too many requests\. Try again in \d+ s\.$")
    )
    await _widgets_intact(a)

    posted: list[int] = []

    async def post() -> int:
        async with b.page.expect_response(lambda r: r.url.endswith("/activity")) as answer:
            await b.page.fill("#post-message", f"limited {_tag()}")
            await b.page.click("#post-submit")
        response = await answer.value
        if response.status == 201:
            match = re.search(r'id="activity-(\d+)"', await response.text())
            assert match
            posted.append(int(match.group(1)))
        return response.status

    statuses = await _until_limited(post)
    assert statuses[-1] == 429, statuses
    await expect(b.page.locator("#post-error")).to_have_text(
        re.compile(r"^Too many requests\. Try again in \d+ s\.$")
    )
    for item_id in posted:
        await expect(b.item(item_id)).to_be_visible()
    await expect(b.page.locator("#feed")).not_to_contain_text("Too many")
    await _widgets_intact(b)
    await web.screenshot(a, "rename-limited")
    await web.finish(b)


async def test_refused_stream_is_retried_after_retry_after(
    web: Web, app_server: ServerFactory
) -> None:
    web.allow_console(r"status of 503")
    server = await asyncio.to_thread(
        app_server,
        env={"MAX_STREAMS_PER_WORKER": "1", "MAX_STREAMS_PER_CLIENT": "0"},
        workers=1,
    )
    holder = await SSEClient.connect(server.base_url)
    try:
        assert holder.status == 200
        context = await web.context("a")
        answers: list[tuple[float, int, str | None]] = []

        def on_response(response: Response) -> None:
            if "/events" in response.url:
                retry = response.headers.get("retry-after")
                answers.append((time.monotonic(), response.status, retry))

        context.on("response", on_response)
        a = await web.open(server.base_url, "a", context=context, live=False)
        refused = await a.page.wait_for_event(
            "response", lambda r: "/events" in r.url and r.status == 503, timeout=10_000
        )
        retry_after = int(await refused.header_value("retry-after") or "0")
        assert retry_after >= 1
        await a.wait_state("reconnecting", timeout=5)
        await _widgets_intact(a)
        await web.screenshot(a, "refused")
    finally:
        await holder.aclose()

    await a.wait_live(timeout=retry_after + 15)
    statuses = [status for _, status, _ in answers]
    assert statuses[0] == 503, answers
    assert statuses[-1] == 200, answers
    refused_at = answers[0][0]
    opened_at = next(at for at, status, _ in answers if status == 200)
    assert opened_at - refused_at >= retry_after - 0.5, answers

    async with await Visitor.arrive(server.base_url) as writer:
        value = (await writer.increment()).json()["value"]
    await a.wait_counter(value)
    await _widgets_intact(a)
    await web.finish(a)


async def test_terminated_listener_resyncs_both_pages(
    web: Web, shared: AppServer, database_url: str
) -> None:
    a = await web.open(shared.base_url, "a")
    b = await web.open(shared.base_url, "b")
    resyncs = {tab.label: await tab.event_count("resync") for tab in (a, b)}

    killed = await database.fetch(database_url, TERMINATE_LISTENERS)
    assert len(killed) >= 2  # one listener per worker
    async with await Visitor.arrive(shared.base_url) as writer:
        item_id = (await writer.post(f"while the listener was down {_tag()}")).json()["id"]
        value = (await writer.increment()).json()["value"]

    for tab in (a, b):
        await tab.wait_events("resync", resyncs[tab.label] + 1, timeout=15)
        await expect(tab.item(item_id)).to_be_visible(timeout=10_000)
        await expect(tab.item(item_id)).to_have_count(1)
        await tab.wait_counter(value)
        assert _descending(await tab.feed_ids())
        await tab.wait_live(timeout=5)

    # And live delivery works again afterwards.
    async with await Visitor.arrive(shared.base_url) as writer:
        after = (await writer.post(f"after the resync {_tag()}")).json()["id"]
    for tab in (a, b):
        await expect(tab.item(after)).to_be_visible(timeout=10_000)
    await web.finish(a)


async def test_restarted_instance_page_catches_up(
    web: Web, app_server: ServerFactory, shared: AppServer
) -> None:
    web.allow_network_errors()
    first = await asyncio.to_thread(app_server, workers=2)
    second = shared  # the other instance, on the same database
    a = await web.open(first.base_url, "a")
    b = await web.open(second.base_url, "b")
    a_id, b_id = await a.visitor_id(), await b.visitor_id()
    await expect(a.person(b_id)).to_be_visible(timeout=10_000)
    seen_before = await a.feed_ids()

    await first.astop()
    await a.wait_state("reconnecting", timeout=10)
    await _widgets_intact(a)
    async with await Visitor.arrive(second.base_url) as writer:
        away = [(await writer.post(f"away {i} {_tag()}")).json()["id"] for i in range(5)]
        value = (await writer.increment()).json()["value"]
    new_name = f"Bo {_tag()}"
    assert await b.rename(new_name) == 200

    await asyncio.to_thread(app_server, workers=2, port=first.port)
    await a.wait_live(timeout=40)
    await a.wait_items(away, timeout=15)
    await a.page.wait_for_function(
        "(id) => window.ripple.cursor() >= id", arg=max(away), timeout=10_000
    )
    shown = await a.feed_ids()
    assert _descending(shown), shown
    assert set(away) <= set(shown)
    assert set(seen_before) <= set(shown)
    await a.wait_counter(value)
    await expect(a.person(b_id).locator(".person-name")).to_have_text(new_name, timeout=10_000)
    await expect(a.person(a_id)).to_be_visible()
    await web.finish(a)
