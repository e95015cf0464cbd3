"""Concurrent identical reads share one query, never one that began before they arrived."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, Generic, TypeVar

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


def _copy_outcome(source: asyncio.Future[T], target: asyncio.Future[T]) -> None:
    if target.done():
        return
    if source.cancelled():
        target.cancel()
    elif (error := source.exception()) is not None:
        target.set_exception(error)
    else:
        target.set_result(source.result())


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Mark an error as seen: every waiter may have given up (asyncio would log it)."""
    if not future.cancelled():
        future.exception()


class FreshReads(Generic[K, T]):
    """Read-through coalescing for the fragments every event makes every page fetch.

    A page asks for the counter because an event said it changed, so an answer read before
    the request arrived could predate that change. A request therefore joins a query only
    if that query has not started yet: while one runs, later arrivals wait for the next,
    which starts as soon as it ends. A burst of N identical requests costs two or three
    queries instead of N. (The usual single-flight helpers let a request join a query
    already under way, which would break that rule.)
    """

    def __init__(self, read: Callable[[K], Awaitable[T]]) -> None:
        self._read = read
        self._running: dict[K, asyncio.Future[T]] = {}
        self._next: dict[K, asyncio.Future[T]] = {}

    async def get(self, key: K) -> T:
        future = self._next.get(key)
        if future is None:
            if key in self._running:
                future = self._next[key] = asyncio.get_running_loop().create_future()
                future.add_done_callback(_retrieve)
            else:
                future = self._start(key)
        # A caller that gives up (a client gone) must not cancel the others' answer.
        return await asyncio.shield(future)

    def _start(self, key: K) -> asyncio.Future[T]:
        task = asyncio.ensure_future(self._read(key))
        self._running[key] = task
        task.add_done_callback(lambda done: self._finished(key, done))
        return task

    def _finished(self, key: K, task: asyncio.Future[T]) -> None:
        _retrieve(task)
        del self._running[key]
        waiting = self._next.pop(key, None)
        if waiting is not None:
            self._start(key).add_done_callback(lambda done: _copy_outcome(done, waiting))
