"""Coalesced reads: shared only with requests that arrived before the query began."""

import asyncio
from collections.abc import Callable

import pytest

from app.freshreads import FreshReads


class Source:
    """A value that changes; each read takes a while and records when it began."""

    def __init__(self) -> None:
        self.value = 0
        self.reads = 0
        self.release = asyncio.Event()
        self.failures = 0

    async def read(self, key: str) -> tuple[str, int]:
        self.reads += 1
        seen = self.value  # the snapshot is taken when the query starts
        await self.release.wait()
        if self.failures:
            self.failures -= 1
            raise OSError("connection lost")
        return key, seen


async def _until(check: Callable[[], bool]) -> None:
    for _ in range(100):
        if check():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition not reached")


async def test_a_burst_of_requests_costs_two_reads() -> None:
    source = Source()
    reads = FreshReads(source.read)
    # The first starts a read; the rest arrived after it began, so they share the next one.
    waiters = [asyncio.create_task(reads.get("counter")) for _ in range(50)]
    await _until(lambda: source.reads == 1)
    source.release.set()
    assert set(await asyncio.gather(*waiters)) == {("counter", 0)}
    assert source.reads == 2


async def test_a_request_never_gets_a_read_that_began_before_it_arrived() -> None:
    source = Source()
    reads = FreshReads(source.read)
    early = asyncio.create_task(reads.get("counter"))
    await _until(lambda: source.reads == 1)  # the first read is under way, snapshot taken
    source.value = 1  # a write commits; its event makes pages ask again
    late = [asyncio.create_task(reads.get("counter")) for _ in range(20)]
    for _ in range(5):
        await asyncio.sleep(0)
    assert source.reads == 1  # the late ones wait for the next read...
    source.release.set()
    assert await early == ("counter", 0)
    assert set(await asyncio.gather(*late)) == {("counter", 1)}  # ...which sees the write
    assert source.reads == 2


async def test_different_keys_are_read_separately() -> None:
    source = Source()
    reads = FreshReads(source.read)
    source.release.set()
    assert list(await asyncio.gather(reads.get("a"), reads.get("b"))) == [("a", 0), ("b", 0)]
    assert source.reads == 2


async def test_an_error_reaches_the_requests_of_that_read_and_the_next_read_works() -> None:
    source = Source()
    reads = FreshReads(source.read)
    source.failures = 2
    first = asyncio.create_task(reads.get("counter"))  # read 1
    await _until(lambda: source.reads == 1)
    sharing = [asyncio.create_task(reads.get("counter")) for _ in range(3)]  # read 2
    source.release.set()
    for task in [first, *sharing]:
        with pytest.raises(OSError, match="connection lost"):
            await task
    assert source.reads == 2
    assert await reads.get("counter") == ("counter", 0)


async def test_a_request_that_gives_up_does_not_cancel_the_others() -> None:
    source = Source()
    reads = FreshReads(source.read)
    quitter = asyncio.create_task(reads.get("counter"))
    stayer = asyncio.create_task(reads.get("counter"))
    await asyncio.sleep(0)
    quitter.cancel()
    await asyncio.sleep(0)
    source.release.set()
    assert await stayer == ("counter", 0)
    assert quitter.cancelled()
