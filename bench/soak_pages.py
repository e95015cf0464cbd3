"""Real Chromium pages in the soak: opened at the start, compared with the database at the end."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from typing import Any

from playwright.async_api import Browser, Page, Playwright, async_playwright
from support.browser import CHROMIUM, CHROMIUM_ARGS

from bench.net import now

# What the page shows: feed ids (newest first), counter, presence count and names, status.
PAGE_STATE = """
() => ({
  ids: [...document.querySelectorAll('#feed > li')].map((el) => Number(el.dataset.id)),
  counter: Number(document.querySelector('#counter .counter-value')?.dataset.value ?? -1),
  online: Number(document.querySelector('#presence [data-online]')?.dataset.online ?? -1),
  people: [...document.querySelectorAll('#presence li.person')].map((el) => el.dataset.visitorId),
  state: document.getElementById('status')?.dataset.state ?? '',
})
"""


@dataclass
class PageView:
    label: str
    port: int
    page: Page
    errors: list[str] = field(default_factory=list)

    def record_error(self, error: Exception) -> None:
        self.errors.append(f"pageerror: {error}")


@dataclass
class Expected:
    """The database's answer to "what should a page show now"."""

    newest_ids: list[int]  # newest first
    counter: int
    online: int
    people: set[str]


def mismatch(state: dict[str, Any], expected: Expected, compare: int = 20) -> list[str]:
    """What differs between a page and the database (empty: the page shows the truth)."""
    problems = []
    ids: list[int] = state["ids"]
    if len(ids) != len(set(ids)):
        problems.append("an item shown twice")
    if ids != sorted(ids, reverse=True):
        problems.append("feed out of order")
    want = expected.newest_ids[:compare]
    if ids[: len(want)] != want:
        problems.append(f"newest items {ids[:5]}... != {want[:5]}...")
    if state["counter"] != expected.counter:
        problems.append(f"counter {state['counter']} != {expected.counter}")
    if state["online"] != expected.online:
        problems.append(f"online {state['online']} != {expected.online}")
    shown = {uuid.UUID(p).hex for p in state["people"] if p}
    if shown != expected.people:
        extra, absent = sorted(shown - expected.people), sorted(expected.people - shown)
        problems.append(f"presence: shown but offline {extra[:3]}, not shown {absent[:3]}")
    return problems


class Pages:
    def __init__(self) -> None:
        self._playwright: Playwright | None = None
        self.browser: Browser | None = None
        self.views: list[PageView] = []

    async def open(self, ports: list[tuple[str, int]]) -> None:
        """One page per (label, port), each in its own browser context (its own visitor)."""
        self._playwright = await async_playwright().start()
        self.browser = await self._playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS
        )
        for label, port in ports:
            context = await self.browser.new_context()
            page = await context.new_page()
            view = PageView(label, port, page)
            page.on("pageerror", view.record_error)
            await page.goto(f"http://127.0.0.1:{port}/", timeout=60_000)
            await page.wait_for_selector("#status[data-state=live]", timeout=60_000)
            self.views.append(view)

    async def states(self) -> list[dict[str, Any]]:
        found = []
        for view in self.views:
            try:
                state = await asyncio.wait_for(view.page.evaluate(PAGE_STATE), 10)
            except Exception as exc:  # a page that cannot answer is a finding, not a crash
                state = {"error": f"{type(exc).__name__}: {exc}"}
            found.append(state)
        return found

    async def close(self) -> None:
        if self.browser is not None:
            try:
                await asyncio.wait_for(self.browser.close(), 20)
            except Exception:
                # The browser's process is ours: kill it by pid if it will not close.
                process = getattr(getattr(self.browser, "_impl_obj", None), "process", None)
                if process is not None:
                    process.kill()
        if self._playwright is not None:
            await self._playwright.stop()


async def converge(
    pages: Pages, expected: Any, timeout: float, since: float
) -> list[dict[str, Any]]:
    """Poll every page until it matches the database (re-read each round) or `timeout`.

    `expected` is an async callable returning `Expected`. Returns per page: converged,
    seconds from `since` (on the `now()` clock) to the first matching poll, last problems.
    """
    results: list[dict[str, Any]] = [
        {"label": v.label, "converged": False, "after_s": None, "problems": []} for v in pages.views
    ]
    deadline = now() + timeout
    while True:
        truth: Expected = await expected()
        states = await pages.states()
        for result, state in zip(results, states, strict=True):
            if result["converged"]:
                continue
            problems = [state["error"]] if "error" in state else mismatch(state, truth)
            result["problems"] = problems
            if not problems:
                result["converged"] = True
                result["after_s"] = round(now() - since, 2)
                result["state"] = {k: state[k] for k in ("counter", "online", "state")}
        if all(r["converged"] for r in results) or now() > deadline:
            break
        await asyncio.sleep(0.5)
    for result, view in zip(results, pages.views, strict=True):
        result["page_errors"] = view.errors[:10]
    return results
