"""Browser-side helpers for the Playwright tests: a ``Tab`` per page, a ``Web`` per test.

The fixtures that use them (``browser``, ``web``, ``module_server``) live in
``support.browser_plugin``, which test modules load with ``pytest_plugins``.

A ``Web`` opens pages with a recorder installed before any page script runs (CSP violations,
the stream's named events), watches uncaught errors, console errors and dialogs, and
``await web.finish(tab)`` saves the test's main view into ``test-artifacts/`` and asserts that
no page saw a problem.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from playwright.async_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Dialog,
    Locator,
    Page,
    expect,
)
from playwright.async_api import Error as PlaywrightError

from .paths import REPO_ROOT
from .server import AppServer

# The browser CI installs (scripts/test installs the Debian package); Playwright's own
# browser downloads are not used.
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-gpu",
]
ARTIFACTS = REPO_ROOT / "test-artifacts"

# ``module_server(env=..., workers=...)``, like the per-test ``app_server``.
ServerFactory = Callable[..., AppServer]

# Installed in every page before its own scripts. Records what the tests check afterwards:
# CSP violations (also reported to Python at once, so a page closed later still counts) and
# every named stream event as it reaches the document (relayed ones included).
INIT_SCRIPT = """
(() => {
  const log = {csp: [], events: []};
  Object.defineProperty(window, '__rippleTest', {value: log});
  document.addEventListener('securitypolicyviolation', (e) => {
    const text = `${e.violatedDirective} blocked ${e.blockedURI || 'inline code'}`
      + ` (${e.sourceFile || 'page'}:${e.lineNumber})`;
    log.csp.push(text);
    try { window.__rippleReport?.('csp', text); } catch (err) { /* page closing */ }
  }, true);
  for (const name of ['counter', 'presence', 'activity', 'ping', 'resync', 'ripple-open']) {
    document.addEventListener(name, (e) => {
      log.events.push({name, data: e.detail?.data ?? null, id: e.detail?.id ?? null,
        at: Date.now()});
    }, true);
  }
})();
"""

# Records every value the counter shows (each added node and each settled state), so a test
# can assert that it never stepped back.
COUNTER_RECORDER = """
() => {
  const seen = [];
  const push = (v) => {
    const n = Number(v);
    if (v !== undefined && Number.isFinite(n) && seen[seen.length - 1] !== n) seen.push(n);
  };
  const current = () => push(document.querySelector('#counter [data-value]')?.dataset.value);
  current();
  new MutationObserver((records) => {
    for (const r of records) {
      for (const node of r.addedNodes) {
        if (node.nodeType !== 1) continue;
        const el = node.matches('[data-value]') ? node : node.querySelector('[data-value]');
        push(el?.dataset.value);
      }
    }
    current();
  }).observe(document.getElementById('counter'),
    {subtree: true, childList: true, attributes: true, characterData: true});
  window.__counterSeen = seen;
}
"""

# Make this tab look like a background tab to page scripts (and to htmx).
HIDE_TAB = """
() => {
  Object.defineProperty(document, 'hidden', {configurable: true, get: () => true});
  Object.defineProperty(document, 'visibilityState', {configurable: true, get: () => 'hidden'});
  document.dispatchEvent(new Event('visibilitychange'));
}
"""

# Console errors that are expected when a test breaks the network or the server on purpose.
NETWORK_ERRORS = (
    r"^Failed to load resource",
    r"net::ERR_",
    r"htmx:sse:error",
)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-")[:120]


class Tab:
    """One page of the app, with the page's own DOM hooks as helpers."""

    def __init__(self, page: Page, label: str) -> None:
        self.page = page
        self.label = label

    # -- locators ---------------------------------------------------------------------------

    @property
    def status(self) -> Locator:
        return self.page.locator("#status")

    @property
    def counter(self) -> Locator:
        return self.page.locator("#counter .counter-value")

    @property
    def feed_items(self) -> Locator:
        return self.page.locator("#feed > li")

    def item(self, item_id: int) -> Locator:
        return self.page.locator(f"#feed > li#activity-{item_id}")

    def person(self, visitor_id: str) -> Locator:
        return self.page.locator(f'#presence li.person[data-visitor-id="{visitor_id}"]')

    # -- reads ------------------------------------------------------------------------------

    async def visitor_id(self) -> str:
        value = await self.page.get_attribute('meta[name="ripple-visitor"]', "content")
        assert value, "the page names no visitor"
        return value

    async def counter_value(self) -> int:
        return int(await self.counter.get_attribute("data-value") or "-1")

    async def feed_ids(self) -> list[int]:
        ids: list[int] = await self.page.eval_on_selector_all(
            "#feed > li", "els => els.map((el) => Number(el.dataset.id))"
        )
        return ids

    async def role(self) -> str:
        return str(await self.page.evaluate("document.documentElement.dataset.stream || ''"))

    async def events(self, name: str) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = await self.page.evaluate(
            "(name) => window.__rippleTest.events.filter((e) => e.name === name)", name
        )
        return events

    async def event_count(self, name: str) -> int:
        return len(await self.events(name))

    # -- waits ------------------------------------------------------------------------------

    async def wait_state(self, state: str, timeout: float = 15) -> None:
        await expect(self.status).to_have_attribute("data-state", state, timeout=timeout * 1000)

    async def wait_live(self, timeout: float = 15) -> None:
        await self.wait_state("live", timeout)

    async def wait_counter(self, value: int, timeout: float = 10) -> None:
        await expect(self.counter).to_have_attribute(
            "data-value", str(value), timeout=timeout * 1000
        )

    async def wait_items(self, ids: list[int], timeout: float = 10) -> None:
        """Every id in ``ids`` is in the feed."""
        await self.page.wait_for_function(
            "(ids) => ids.every((id) => document.getElementById(`activity-${id}`))",
            arg=ids,
            timeout=timeout * 1000,
        )

    async def wait_events(self, name: str, count: int, timeout: float = 15) -> None:
        """At least ``count`` ``name`` events have reached this page so far."""
        await self.page.wait_for_function(
            "([name, n]) => window.__rippleTest.events.filter((e) => e.name === name).length >= n",
            arg=[name, count],
            timeout=timeout * 1000,
        )

    # -- actions ----------------------------------------------------------------------------

    async def post(self, message: str) -> int:
        """Post through the form; return the new item's id (from the POST answer)."""
        async with self.page.expect_response(
            lambda r: r.url.endswith("/activity") and r.request.method == "POST"
        ) as answer:
            await self.page.fill("#post-message", message)
            await self.page.click("#post-submit")
        response = await answer.value
        assert response.status == 201, await response.text()
        match = re.search(r'id="activity-(\d+)"', await response.text())
        assert match, "the POST answer holds no feed item"
        return int(match.group(1))

    async def rename(self, name: str) -> int:
        """Rename through the form; return the answer's status."""
        async with self.page.expect_response(
            lambda r: r.url.endswith("/me") and r.request.method == "POST"
        ) as answer:
            await self.page.fill("#name-input", name)
            await self.page.click("#name-submit")
        return (await answer.value).status

    async def hide(self) -> None:
        await self.page.evaluate(HIDE_TAB)

    async def record_counter(self) -> None:
        await self.page.evaluate(COUNTER_RECORDER)

    async def counter_history(self) -> list[int]:
        seen: list[int] = await self.page.evaluate("window.__counterSeen")
        return seen


class Web:
    """The browser side of one test: contexts, pages, and what went wrong in them."""

    def __init__(self, browser: Browser, test_name: str) -> None:
        self.browser = browser
        self.name = _safe(test_name)
        self.contexts: list[BrowserContext] = []
        self.tabs: list[Tab] = []
        self.problems: list[str] = []
        self.allowed: list[re.Pattern[str]] = []
        self.dialogs: list[str] = []

    def allow_console(self, *patterns: str) -> None:
        """Console errors matching one of ``patterns`` are expected in this test."""
        self.allowed.extend(re.compile(p) for p in patterns)

    def allow_network_errors(self) -> None:
        """The test breaks the server on purpose: failed requests are expected."""
        self.allow_console(*NETWORK_ERRORS)

    async def context(self, label: str, **options: Any) -> BrowserContext:
        options.setdefault("viewport", {"width": 1280, "height": 900})
        options.setdefault("color_scheme", "light")
        context = await self.browser.new_context(**options)
        self.contexts.append(context)

        def report(_source: object, kind: str, text: str) -> None:
            self.problems.append(f"{label}: {kind}: {text}")

        await context.expose_binding("__rippleReport", report)
        await context.add_init_script(INIT_SCRIPT)
        return context

    async def open(
        self,
        base_url: str,
        label: str,
        *,
        context: BrowserContext | None = None,
        live: bool = True,
        **options: Any,
    ) -> Tab:
        """Open ``/`` in ``context`` (a new one by default); wait until the status is live."""
        context = context or await self.context(label, **options)
        page = await context.new_page()
        tab = Tab(page, label)
        self._watch(tab)
        self.tabs.append(tab)
        await page.goto(f"{base_url}/", wait_until="domcontentloaded")
        if live:
            await tab.wait_live()
        return tab

    def _watch(self, tab: Tab) -> None:
        label = tab.label

        def on_console(message: ConsoleMessage) -> None:
            text = message.text
            if "Content Security Policy" in text:
                self.problems.append(f"{label}: csp (console): {text}")
            elif message.type == "error" and not any(p.search(text) for p in self.allowed):
                self.problems.append(f"{label}: console error: {text}")

        def on_error(error: PlaywrightError) -> None:
            self.problems.append(f"{label}: uncaught: {error}")

        async def on_dialog(dialog: Dialog) -> None:
            self.dialogs.append(f"{label}: {dialog.type}: {dialog.message}")
            self.problems.append(f"{label}: dialog opened: {dialog.message}")
            await dialog.dismiss()

        tab.page.on("console", on_console)
        tab.page.on("pageerror", on_error)
        tab.page.on("dialog", on_dialog)

    def artifact(self, suffix: str) -> Path:
        ARTIFACTS.mkdir(exist_ok=True)
        return ARTIFACTS / f"{self.name}-{_safe(suffix)}.png"

    async def screenshot(self, tab: Tab, suffix: str = "main", *, full_page: bool = False) -> Path:
        path = self.artifact(suffix)
        await tab.page.screenshot(path=str(path), full_page=full_page, animations="disabled")
        return path

    async def collect_csp(self) -> None:
        """Read the violations recorded in pages still open (the binding reports them too)."""
        for tab in self.tabs:
            if tab.page.is_closed():
                continue
            found: list[str] = await tab.page.evaluate("window.__rippleTest?.csp ?? []")
            for text in found:
                entry = f"{tab.label}: csp: {text}"
                if entry not in self.problems:
                    self.problems.append(entry)

    async def assert_clean(self) -> None:
        await self.collect_csp()
        assert not self.problems, "the pages reported problems:\n" + "\n".join(self.problems)

    async def finish(self, main: Tab) -> None:
        """Save the test's main view, then assert that no page saw a problem."""
        await self.screenshot(main)
        await self.assert_clean()

    async def screenshot_all(self, suffix: str) -> None:
        for index, tab in enumerate(self.tabs):
            if tab.page.is_closed():
                continue
            try:
                await asyncio.wait_for(
                    self.screenshot(tab, f"{suffix}-{index}-{tab.label}"), timeout=10
                )
            except Exception as exc:
                print(f"no screenshot of {tab.label}: {exc!r}")

    async def close(self) -> None:
        for context in reversed(self.contexts):
            try:
                await asyncio.wait_for(context.close(), timeout=10)
            except Exception as exc:
                print(f"closing a browser context failed: {exc!r}")
