"""Rendered feed items kept in a worker's memory."""

from __future__ import annotations

from collections import OrderedDict


class ItemCache:
    """Rendered feed items (HTML and ETag) of this worker, newest used kept.

    An item never changes; it can only be hidden or pruned. Both send a resync, and every
    resync a worker handles (those and a listener reconnect) empties that worker's cache.
    """

    def __init__(self, size: int = 4096) -> None:
        self._size = size
        self._items: OrderedDict[int, tuple[bytes, str]] = OrderedDict()
        self._generation = 0

    def get(self, item_id: int, generation: int) -> tuple[bytes, str] | None:
        if generation != self._generation:
            self._items.clear()
            self._generation = generation
            return None
        entry = self._items.get(item_id)
        if entry is not None:
            self._items.move_to_end(item_id)
        return entry

    def put(self, item_id: int, entry: tuple[bytes, str]) -> None:
        self._items[item_id] = entry
        if len(self._items) > self._size:
            self._items.popitem(last=False)

    def forget(self, item_id: int) -> None:
        self._items.pop(item_id, None)
