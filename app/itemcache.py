"""Rendered feed items kept in a worker's memory, warmed as their notifications arrive."""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from app import metrics

log = logging.getLogger("ripple.itemcache")


@dataclass(frozen=True, slots=True)
class CachedItem:
    """One item's HTML and its answers, built once (app.web.fragments.item_entry).

    The answers are what follows the status line and the `date` header, so whoever sends
    one (the front door, or the HTTP protocol itself) adds only those two.
    """

    body: bytes
    etag: str
    ok: bytes  # 200: the headers, a blank line, the body
    ok_head: bytes  # 200 to a HEAD: the same headers and blank line, no body
    not_modified: bytes  # 304: the headers and a blank line


Load = Callable[[int], Awaitable[CachedItem | None]]


class ItemCache:
    """Rendered feed items (HTML, ETag, ready answers) of this worker, newest used kept.

    An item never changes; it can only be hidden or pruned. Both send a resync, and every
    resync a worker handles (those and a listener reconnect) empties that worker's cache.

    Warming: every open page fetches a new item the moment its stream names it, so the
    worker reads and renders it when the notification arrives (`warm`); a fetch that comes
    before that read ends waits for it (`wait_warm`) rather than making a read of its own.
    Only while items are being fetched here (`fetched`, set by every fetch of one item by
    its URL): streams whose clients never fetch (API clients, a benchmark's bare streams)
    would pay a query and a render per event for nothing.
    """

    def __init__(
        self, generation: Callable[[], int], size: int = 4096, max_warming: int = 64
    ) -> None:
        self._current_generation = generation  # the hub's resync generation, now
        self._size = size
        self._items: OrderedDict[int, CachedItem] = OrderedDict()
        self._generation = 0
        self._max_warming = max_warming
        self._warming: dict[int, asyncio.Task[None]] = {}
        self.fetched = False  # an item was fetched by its URL since the last warm

    def _adopt(self) -> int:
        """A resync since the last look empties the cache."""
        generation = self._current_generation()
        if generation != self._generation:
            self._items.clear()
            self._generation = generation
        return generation

    def get(self, item_id: int) -> CachedItem | None:
        self._adopt()
        entry = self._items.get(item_id)
        if entry is not None:
            self._items.move_to_end(item_id)
        return entry

    def put(self, item_id: int, entry: CachedItem, generation: int) -> None:
        """Keep an entry whose read began at resync `generation`, unless a resync came since
        (the item may have been hidden meanwhile)."""
        if self._adopt() != generation:
            return
        self._items[item_id] = entry
        if len(self._items) > self._size:
            self._items.popitem(last=False)

    def forget(self, item_id: int) -> None:
        self._items.pop(item_id, None)

    # -- warming ---------------------------------------------------------------------------

    def warm(self, item_id: int, load: Load) -> None:
        """Start reading and rendering `item_id` unless it is cached or already coming.

        Bounded: past `max_warming` reads at once (a burst of posts), items are left to the
        fetches, which share their reads anyway (app.freshreads)."""
        if not self.fetched:
            return  # nobody here fetched the last items: nobody will fetch this one
        if item_id in self._warming or len(self._warming) >= self._max_warming:
            return
        self.fetched = False
        if self.get(item_id) is not None:
            return
        task = asyncio.create_task(self._warm(item_id, self._generation, load))
        self._warming[item_id] = task
        task.add_done_callback(lambda _: self._warming.pop(item_id, None))

    async def _warm(self, item_id: int, generation: int, load: Load) -> None:
        try:
            entry = await load(item_id)
        except Exception as exc:  # the fetches will read it themselves and answer the error
            log.debug("warming item %d failed: %s", item_id, type(exc).__name__)
            return
        if entry is not None:
            self.put(item_id, entry, generation)
            metrics.ITEMS_WARMED.inc()

    async def wait_warm(self, item_id: int, timeout: float) -> None:
        """Until `item_id`'s warming read ends (at most `timeout`); at once if none runs."""
        task = self._warming.get(item_id)
        if task is not None:
            await asyncio.wait([task], timeout=timeout)

    def warming(self, item_id: int) -> bool:
        return item_id in self._warming

    async def stop(self) -> None:
        tasks = list(self._warming.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=2)
