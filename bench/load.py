"""The load: visitors, steady-rate and closed-loop writers, and clients that record events.

Clients are modelled as a page would behave, without a browser: each stream is one tab;
on an `activity` event the tab fetches the item (`item` mode), or does what the page does
(`page` mode: a live event fetches its item, `?after=` only catches up a burst, a replay
or a resync), or, in `after` mode, what the older page script did: one debounced
`?after=cursor` fetch, one in flight per tab. After the counter hammer it re-reads the
counter once (see `Recorder.read_counters`). Each tab fetches over one keep-alive
connection of its own, as a browser's page does; clients can share pools instead
(`--fetch-group`, `--fetch-conns`), and the docs explain what that changes.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
import numpy as np

from bench import net
from bench.net import Pool, SseStream, StreamSink, now
from bench.stats import summary_ms

COUNTER_VALUE = re.compile(rb'data-value="(\d+)"')


@dataclass(frozen=True)
class Visitor:
    cookie: str  # the Cookie header
    csrf: str


async def get_visitors(port: int, count: int) -> list[Visitor]:
    """One GET / per visitor: the identity cookie and the CSRF cookie, as a browser gets them.

    Set-up, not measured: httpx, with the jar emptied before each visitor arrives.
    """
    found = []
    async with httpx.AsyncClient(base_url=f"http://{net.HOST}:{port}", timeout=30) as client:
        for _ in range(count):
            client.cookies.clear()
            answer = await client.get("/", headers={"Accept": "text/html"})
            if answer.status_code != 200:
                raise RuntimeError(f"GET / answered {answer.status_code}: {answer.text[:200]!r}")
            jar = dict(answer.cookies.items())
            if "csrftoken" not in jar:
                raise RuntimeError(f"GET / set no csrftoken cookie (got {sorted(jar)})")
            cookie = "; ".join(f"{k}={v}" for k, v in jar.items())
            found.append(Visitor(cookie=cookie, csrf=jar["csrftoken"]))
    return found


def post_request(port: int, visitor: Visitor, kind: str, serial: int) -> bytes:
    headers = {
        "Cookie": visitor.cookie,
        "x-csrftoken": visitor.csrf,
        "Accept": "application/json",
        "Content-Type": "application/x-www-form-urlencoded",
    }
    if kind == "activity":
        body = f"message=bench+message+{serial}".encode()
        return net.request_bytes("POST", "/activity", port, headers, body)
    return net.request_bytes("POST", "/counter/increment", port, headers, b"")


@dataclass
class Writes:
    """What a writer sent: per request its send time, answer time, status and id or value."""

    sent: array[float] = field(default_factory=lambda: array("d"))
    done: array[float] = field(default_factory=lambda: array("d"))
    status: array[int] = field(default_factory=lambda: array("i"))
    ref: array[int] = field(default_factory=lambda: array("q"))  # activity id or counter value
    outstanding: int = 0
    skipped: int = 0
    json_answers: bool = True  # writes answer JSON; fragments do not

    def record(self, status: int, body: bytes, sent: float, done: float) -> None:
        self.outstanding -= 1
        ref = -1
        if status in (200, 201) and self.json_answers:
            try:
                answer = json.loads(body)
                ref = int(answer.get("id", answer.get("value", -1)))
            except (ValueError, AttributeError):
                status = -status
        self.sent.append(sent)
        self.done.append(done)
        self.status.append(status)
        self.ref.append(ref)

    @property
    def ok(self) -> int:
        return sum(1 for s in self.status if s in (200, 201))

    def sent_at(self) -> dict[int, float]:
        return {
            r: s for r, s, st in zip(self.ref, self.sent, self.status, strict=True) if st == 201
        }


async def steady(
    pool: Pool,
    requests: list[bytes],
    rate: float,
    seconds: float,
    drain: float = 30.0,
    max_backlog: int | None = None,
) -> Writes:
    """Open loop: request i is due at t0 + i / rate, whatever the answers do.

    With `max_backlog`, a request that would wait behind more than that many queued ones
    is skipped (counted in `skipped`): the server is not keeping up, and queueing
    thousands of requests in the client would only measure the queue.
    """
    writes = Writes()
    total = max(1, round(rate * seconds))
    t0 = now()
    due_so_far = 0
    while due_so_far < total and now() - t0 < seconds + 5.0:
        due = min(total, int((now() - t0) * rate) + 1)
        while due_so_far < due:
            if max_backlog is not None and pool.backlog >= max_backlog:
                writes.skipped += 1
            else:
                writes.outstanding += 1
                pool.submit(requests[due_so_far % len(requests)], writes.record)
            due_so_far += 1
        await asyncio.sleep(max(0.0, t0 + due_so_far / rate - now()))
    end = now() + drain
    while writes.outstanding > 0 and now() < end:
        await asyncio.sleep(0.01)
    return writes


async def closed_loop(
    pool: Pool, requests: list[bytes], seconds: float, json_answers: bool = True
) -> tuple[float, Writes]:
    """Every connection sends its next request as soon as the last is answered."""
    writes = Writes(json_answers=json_answers)
    t0 = now()
    end = t0 + seconds
    serial = 0

    def again(status: int, body: bytes, sent: float, done: float) -> None:
        nonlocal serial
        if done <= end:
            writes.record(status, body, sent, done)
        else:
            writes.outstanding -= 1
        if done < end:
            serial += 1
            writes.outstanding += 1
            pool.submit(requests[serial % len(requests)], again)

    for _ in range(pool.size):
        serial += 1
        writes.outstanding += 1
        pool.submit(requests[serial % len(requests)], again)
    await asyncio.sleep(seconds)
    limit = now() + 15.0
    while writes.outstanding > 0 and now() < limit:
        await asyncio.sleep(0.01)
    ok = writes.ok
    return ok / seconds, writes


# -- the clients ------------------------------------------------------------------------


class Recorder(StreamSink):
    """Per-client arrays of what arrived when, and the page-like fetches it triggers.

    A phase sets `start_id` (feed ids above it are this phase's), the fetch `mode`
    (None, "item", "page" or "after") and whether counter events are being recorded.
    With `catchup_window` set, `begin` also schedules one catch-up fetch per client in
    `catchup_clients` at a random moment within that many seconds (see `_catch_up`).
    """

    def __init__(self, count: int, port: int, cookies: list[str], pools: list[Pool], group: int):
        self.count = count
        self.port = port
        self.cookies = cookies  # per client
        self.pools = pools
        self.group = group
        self.loop = asyncio.get_running_loop()
        self.start_id = 1 << 62
        self.mode: str | None = None
        self.counting = False
        self.catchup_clients: list[int] = []
        self.catchup_window = 0.0
        self.catchup_back = 5  # a catch-up asks for the items after (newest seen - this)
        self.timers_catchup: list[asyncio.TimerHandle] = []
        self.reset()

    def reset(self) -> None:
        n = self.count
        self.ids = [array("q") for _ in range(n)]
        self.times = [array("d") for _ in range(n)]
        self.frag_ids = [array("q") for _ in range(n)]
        self.frag_times = [array("d") for _ in range(n)]
        self.frag_failed = 0
        self.frag_sent = 0
        self.frag_first = 0.0
        self.frag_last = 0.0
        self.counter_times = [array("d") for _ in range(n)]
        self.counter_seen: list[int] = [-1] * n
        self.counter_last = 0.0
        self.counter_reads_done = 0
        self.received = 0  # this phase's activity events, all clients
        # Answer times (request written -> answer parsed) of the page's own fetches, by kind:
        # `item` a live event's fetch, `catchup` a ?after= (burst, replay or resync).
        self.served: dict[str, array[float]] = {"item": array("d"), "catchup": array("d")}
        self.via_catchup = 0  # ids first shown by a ?after= fetch (page mode)
        self.newest_seen = [0] * n
        # `after` mode, per client: cursor, highest announced id, ids waiting, busy flag
        self.cursor = [self.start_id] * n
        self.waiting: list[list[int]] = [[] for _ in range(n)]
        self.busy = [False] * n
        self.timers: list[asyncio.TimerHandle | None] = [None] * n

    def begin(self, start_id: int, mode: str | None = None, counting: bool = False) -> None:
        self.start_id = start_id
        self.mode = mode
        self.counting = counting
        self.reset()
        if mode is not None and self.catchup_window > 0:
            rng = random.Random(start_id)  # the same moments for every server in a run
            for index in self.catchup_clients:
                self.timers_catchup.append(
                    self.loop.call_later(
                        0.5 + rng.random() * self.catchup_window, self._catch_up, index
                    )
                )

    def _pool(self, index: int) -> Pool:
        return self.pools[(index // self.group) % len(self.pools)]

    def _get(self, index: int, path: str) -> bytes:
        headers = {"Cookie": self.cookies[index], "HX-Request": "true", "Accept": "text/html"}
        return net.request_bytes("GET", path, self.port, headers)

    # -- activity -------------------------------------------------------------------------

    def on_activity(self, stream: SseStream, item_id: int, at: float) -> None:
        if item_id <= self.start_id:
            return
        index = stream.index
        self.ids[index].append(item_id)
        self.times[index].append(at)
        self.received += 1
        self.newest_seen[index] = max(self.newest_seen[index], item_id)
        if self.mode == "item":
            self._fetch(index, f"/fragments/activity/{item_id}", [item_id], "item")
        elif self.mode == "page":
            self.waiting[index].append(item_id)
            if not self.busy[index]:
                self._page_next(index)
        elif self.mode == "after":
            self.waiting[index].append(item_id)
            if not self.busy[index] and self.timers[index] is None:
                self.timers[index] = self.loop.call_later(0.04, self._pump, index)

    def _page_next(self, index: int) -> None:
        """The page: one waiting id is a live event, fetched by its (cacheable) item URL;
        several (they arrived while a fetch was in flight: a burst) are one ?after=."""
        waiting = self.waiting[index]
        if not waiting:
            return
        self.busy[index] = True
        if len(waiting) == 1:
            item_id = waiting.pop()
            self._fetch(index, f"/fragments/activity/{item_id}", [item_id], "item")
            return
        covers, self.waiting[index] = waiting, []
        cursor = max(self.cursor[index], self.start_id, min(covers) - 1)
        self.via_catchup += len(covers)
        self._fetch(index, f"/fragments/activity?after={cursor}", covers, "catchup")

    def _catch_up(self, index: int) -> None:
        """A page catching up as after a reconnect or a `resync`: the items after the newest
        it had a few items ago. It covers no new id, so it is timed on its own."""
        if self.mode is None:
            return
        cursor = max(0, max(self.newest_seen[index], self.start_id) - self.catchup_back)
        self._fetch(index, f"/fragments/activity?after={cursor}", [], "catchup", gate=False)

    def _fetch(
        self, index: int, path: str, covers: list[int], kind: str = "", gate: bool = True
    ) -> None:
        self.frag_sent += 1
        if not self.frag_first:
            self.frag_first = now()

        def done(status: int, body: bytes, sent: float, at: float) -> None:
            self.frag_last = max(self.frag_last, at)
            if status != 200:
                self.frag_failed += 1
            else:
                if kind:
                    self.served[kind].append(at - sent)
                for item_id in covers:
                    self.frag_ids[index].append(item_id)
                    self.frag_times[index].append(at)
            if self.mode == "page" and gate:
                self.busy[index] = False
                if status == 200 and covers:
                    self.cursor[index] = max(self.cursor[index], max(covers))
                self._page_next(index)  # a failed fetch is not retried: its ids count missing
            if self.mode == "after":
                self.busy[index] = False
                if status == 200 and covers:
                    self.cursor[index] = max(self.cursor[index], max(covers))
                else:  # a failed fetch: these ids are still wanted
                    self.waiting[index][:0] = covers
                if self.waiting[index]:
                    self._pump(index)

        self._pool(index).submit(self._get(index, path), done)

    def _pump(self, index: int) -> None:
        """The page script's loop: one ?after=cursor fetch in flight covers every id seen."""
        self.timers[index] = None
        if self.busy[index] or not self.waiting[index]:
            return
        covers, self.waiting[index] = self.waiting[index], []
        self.busy[index] = True
        cursor = max(self.cursor[index], self.start_id)
        self._fetch(index, f"/fragments/activity?after={cursor}", covers)

    # -- counter --------------------------------------------------------------------------

    def on_counter(self, stream: SseStream, at: float) -> None:
        if not self.counting:
            return
        self.counter_times[stream.index].append(at)
        self.counter_last = at

    def read_counters(self, clients: list[int]) -> None:
        """Every client re-reads the counter once (after the hammer has gone quiet).

        A page re-reads on every counter event (up to 10 a second per tab); thousands of
        clients doing that during the hammer is a load of its own (see docs/scaling.md),
        and what decides what a page finally shows is the read after its last event.
        """
        for index in clients:

            def done(status: int, body: bytes, sent: float, at: float, index: int = index) -> None:
                self.counter_reads_done += 1
                match = COUNTER_VALUE.search(body) if status == 200 else None
                if match is None:
                    self.frag_failed += 1
                else:
                    self.counter_seen[index] = int(match.group(1))

            self.frag_sent += 1
            self._pool(index).submit(self._get(index, "/fragments/counter"), done)

    def cancel_timers(self) -> None:
        for timer in [*self.timers, *self.timers_catchup]:
            if timer is not None:
                timer.cancel()
        self.timers = [None] * self.count
        self.timers_catchup = []


async def wait_until(check: Callable[[], bool], timeout: float, step: float = 0.05) -> bool:
    end = now() + timeout
    while now() < end:
        if check():
            return True
        await asyncio.sleep(step)
    return check()


class LoopLag:
    """How late this process's event loop runs a 5 ms timer: when the load generator itself
    is behind, every latency it measures is inflated by about this much."""

    def __init__(self, tick: float = 0.005) -> None:
        self.tick = tick
        self.samples: array[float] = array("d")
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            t = now()
            await asyncio.sleep(self.tick)
            self.samples.append(now() - t - self.tick)

    def stop(self) -> dict[str, float | int | None]:
        self.task.cancel()
        return summary_ms(np.frombuffer(self.samples, dtype=np.float64))
