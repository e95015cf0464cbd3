"""The soak's load: reconnecting stream clients and a writer, each recording what happened.

A `StreamClient` behaves as the page's stream does (htmx's hx-sse plus static/app.js):
the first request names the starting cursor (`?last_event_id=N`); after any drop it
reconnects with `Last-Event-ID` set to the last `id:` it received, after
`retry * 2**(attempt-1)` ms with +/-30 % jitter (at most 60 s); 35 s of silence means a dead
stream; on `resync` it re-reads the feed (`/fragments/activity?after=cursor`, JSON form)
until it has everything up to the resync's id. It records every activity id with its
arrival time, every resync, and every id it re-read.

On the benchmark's stream protocol (bench/sse_conn.py: one process holds hundreds of
streams), with its own frame reading: every field (`id:`, `event:`, `data:`, `retry:`)
matters here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import re
from array import array
from dataclasses import dataclass, field
from typing import Any

import httpx
from support.rawhttp import event_stream_headers

from bench import net
from bench.load import Visitor, post_request
from bench.sse_conn import SseConnection, now

SILENCE_SECONDS = 35.0  # static/app.js SILENCE_MS
MAX_DELAY_SECONDS = 60.0
FEED_PAGE = 50
CURSOR = re.compile(rb'data-cursor="(\d+)"')


@dataclass
class ErrorLog:
    """Every error by kind and time (seconds on the `now()` clock)."""

    times: array[float] = field(default_factory=lambda: array("d"))
    kinds: list[str] = field(default_factory=list)

    def add(self, kind: str) -> None:
        self.times.append(now())
        self.kinds.append(kind)

    def counts(self) -> dict[str, int]:
        found: dict[str, int] = {}
        for kind in self.kinds:
            found[kind] = found.get(kind, 0) + 1
        return dict(sorted(found.items()))


# -- one connection ---------------------------------------------------------------------


class _Connection(SseConnection):
    """One `GET /events` of a soak client: every field of every frame goes to the client."""

    def __init__(self, client: StreamClient, request: bytes) -> None:
        super().__init__(request)
        self.client = client

    def itself(self) -> _Connection:
        """The protocol factory `create_connection` wants, for this one connection."""
        return self

    def on_frame(self, frame: bytes) -> None:
        if frame.startswith(b"event: activity\nid: "):  # the common frame, read cheaply
            head, _, rest = frame[20:].partition(b"\n")
            if rest.startswith(b"data: ") and b"\n" not in rest and head.isdigit():
                self.client.on_activity(int(head), int(rest[6:]))
                return
        event = data = ""
        event_id: str | None = None
        retry: int | None = None
        for line in frame.decode("utf-8", "replace").split("\n"):
            if not line or line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "event":
                event = value
            elif name == "data":
                data = f"{data}\n{value}" if data else value
            elif name == "id":
                event_id = value
            elif name == "retry" and value.isdigit():
                retry = int(value)
        self.client.on_frame(event, event_id, data, retry)


# -- a client ---------------------------------------------------------------------------


class StreamClient:
    """One simulated tab: a stream that always comes back, and what it received."""

    def __init__(
        self, index: int, port: int, cookie: str, start_cursor: int, errors: ErrorLog
    ) -> None:
        self.index = index
        self.port = port
        self.cookie = cookie
        self.start_cursor = start_cursor
        self.errors = errors
        self.last_event_id = ""
        self.retry_ms = 1000
        self.ids: array[int] = array("q")
        self.times: array[float] = array("d")
        self.resyncs: list[tuple[float, int]] = []  # (time, the resync's id)
        self.reread: set[int] = set()
        self.reread_done_at = 0.0
        self._reread_to = 0  # pending resync target, 0 when none
        self._reread_from = 0  # the cursor when the (first pending) resync arrived
        self._reread_task: asyncio.Task[None] | None = None
        self.opens = 0
        self.drops = 0
        self.open_times: array[float] = array("d")
        self.counter_times: array[float] = array("d")
        self.counter_read: int | None = None
        self.connected = False
        self._conn: _Connection | None = None
        # What happened to this stream, for the report of a client that lost something:
        # (time, what, number): opened/dropped (ids so far), resync (its id), reread (first id).
        self.history: list[tuple[float, str, int]] = []

    # -- what arrives --------------------------------------------------------------------

    @property
    def heard(self) -> float:
        """When the stream's last bytes arrived (or it opened)."""
        return self._conn.heard if self._conn is not None else 0.0

    def on_activity(self, event_id: int, item_id: int) -> None:
        self.last_event_id = str(event_id)
        self.ids.append(item_id)
        self.times.append(self.heard)

    def on_frame(self, event: str, event_id: str | None, data: str, retry: int | None) -> None:
        if event_id is not None:
            self.last_event_id = event_id
        if retry is not None:
            self.retry_ms = retry
        if not event and not data:
            return
        if event == "activity":
            try:
                item_id = int(data)
            except ValueError:
                self.errors.add("bad_activity_frame")
                return
            self.ids.append(item_id)
            self.times.append(self.heard)
        elif event == "counter":
            self.counter_times.append(self.heard)
        elif event == "resync":
            target = int(event_id) if event_id and event_id.isdigit() else 1 << 62
            self.resyncs.append((self.heard, target))
            # The cursor now, not when the re-read runs: frames after the resync in the same
            # read would move it past the very items the resync is about.
            cursor = self.high_water
            self.history.append((self.heard, f"resync from {cursor} to", target))
            self._reread_from = min(self._reread_from, cursor) if self._reread_to else cursor
            self._reread_to = max(self._reread_to, target)
            if self._reread_task is None or self._reread_task.done():
                self._reread_task = asyncio.get_running_loop().create_task(self._reread())

    @property
    def high_water(self) -> int:
        """The highest id this client has, from the stream or re-read."""
        top = max(self.ids) if self.ids else 0
        return max(self.start_cursor, top, max(self.reread, default=0))

    @property
    def reread_pending(self) -> bool:
        return self._reread_to > 0

    async def _reread(self) -> None:
        """Act on a resync as the page does: read the feed after our cursor up to its id."""
        delay = 0.5
        while self._reread_to:
            target = self._reread_to
            cursor = self._reread_from
            try:
                ids = await self._read_after(cursor)
            except (OSError, TimeoutError, ValueError, ConnectionError) as exc:
                self.errors.add(f"reread_{type(exc).__name__}")
                await asyncio.sleep(delay * random.uniform(0.7, 1.3))
                delay = min(10.0, delay * 2)
                continue
            delay = 0.5
            self.history.append(
                (now(), f"reread after {cursor}: {len(ids)} items up to", max(ids, default=0))
            )
            self.reread.update(ids)
            if ids:
                self._reread_from = max(self._reread_from, max(ids))
            if len(ids) < FEED_PAGE or max(ids) >= target:
                if self._reread_to == target:
                    self._reread_to = 0
                self.reread_done_at = now()

    async def _read_after(self, cursor: int) -> list[int]:
        raw = net.request_bytes(
            "GET",
            f"/fragments/activity?after={cursor}",
            self.port,
            {"Cookie": self.cookie, "Accept": "application/json"},
        )
        answer = await net.fetch(self.port, raw, timeout=10)
        if answer.status != 200:
            raise ConnectionError(f"status {answer.status}")
        return [int(item["id"]) for item in json.loads(answer.body)["items"]]

    async def read_counter(self, http: httpx.AsyncClient) -> int | None:
        """The counter as the page re-reads it (a check after the run, not measured load)."""
        url = f"http://{net.HOST}:{self.port}/fragments/counter"
        headers = {"Cookie": self.cookie, "Accept": "application/json"}
        try:
            answer = await http.get(url, headers=headers, timeout=10)
            if answer.status_code == 200:
                self.counter_read = int(answer.json()["value"])
            else:
                self.errors.add(f"counter_read_{answer.status_code}")
        except (httpx.HTTPError, ValueError, KeyError) as exc:
            self.errors.add(f"counter_read_{type(exc).__name__}")
        return self.counter_read

    # -- the connection loop -------------------------------------------------------------

    def _request(self) -> bytes:
        headers = event_stream_headers(self.cookie, self.last_event_id)
        path = f"/events?last_event_id={self.start_cursor}"
        return net.request_bytes("GET", path, self.port, headers)

    def _delay(self, attempt: int) -> float:
        base = min(self.retry_ms / 1000 * 2.0 ** (attempt - 1), MAX_DELAY_SECONDS)
        return max(0.0, base * random.uniform(0.7, 1.3))

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        attempt = 0
        while not stop.is_set():
            if attempt:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self._delay(attempt))
                if stop.is_set():
                    break
            conn = _Connection(self, self._request())
            self._conn = conn
            try:
                await asyncio.wait_for(loop.create_connection(conn.itself, net.HOST, self.port), 10)
                status = await asyncio.wait_for(asyncio.shield(conn.opened), 10)
            except (OSError, TimeoutError):
                conn.close()
                self.errors.add("stream_connect_failed")
                attempt += 1
                continue
            if status != 200:
                conn.close()
                self.errors.add(f"stream_refused_{status}" if status else "stream_connect_failed")
                attempt += 1
                continue
            attempt = 0
            self.opens += 1
            self.open_times.append(now())
            self.history.append(
                (now(), f"opened on {self.port}, Last-Event-ID", int(self.last_event_id or 0))
            )
            self.connected = True
            ended = await self._hold(conn, stop)
            self.connected = False
            if ended == "stop":
                break
            self.drops += 1
            self.errors.add(f"stream_{ended}")
            self.history.append((now(), f"{ended} after ids", len(self.ids)))
            attempt = 1

    async def _hold(self, conn: _Connection, stop: asyncio.Event) -> str:
        """Until the stream ends ("dropped"), goes silent ("silent") or we stop ("stop")."""
        stopping: asyncio.Future[bool] = asyncio.ensure_future(stop.wait())
        try:
            while True:
                left = self.heard + SILENCE_SECONDS - now()
                if left <= 0:
                    conn.close()
                    return "silent"
                waits: set[asyncio.Future[Any]] = {conn.lost, stopping}
                done, _ = await asyncio.wait(waits, timeout=left)
                if stopping in done:
                    conn.close()
                    return "stop"
                if conn.lost in done:
                    return "dropped"
        finally:
            stopping.cancel()

    async def settle_reread(self, timeout: float) -> None:
        if self._reread_task is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self._reread_task), timeout)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
        if self._reread_task is not None:
            self._reread_task.cancel()


async def start_cursor(http: httpx.AsyncClient, port: int, cookie: str) -> int:
    """The page's starting cursor (the newest item it rendered), from `GET /`."""
    headers = {"Cookie": cookie, "Accept": "text/html"}
    answer = await http.get(f"http://{net.HOST}:{port}/", headers=headers, timeout=15)
    match = CURSOR.search(answer.content)
    if answer.status_code != 200 or match is None:
        raise RuntimeError(f"GET / answered {answer.status_code} without a cursor")
    return int(match.group(1))


# -- the writer -------------------------------------------------------------------------


@dataclass
class Writes:
    """Every write sent: when, where, what came back."""

    kind: str
    sent: array[float] = field(default_factory=lambda: array("d"))
    done: array[float] = field(default_factory=lambda: array("d"))
    status: array[int] = field(default_factory=lambda: array("i"))  # 0: no answer
    ref: array[int] = field(default_factory=lambda: array("q"))  # id or counter value, else -1

    def acknowledged(self) -> dict[int, float]:
        """ref -> send time, for every write answered 200/201."""
        return {
            r: s
            for r, s, st in zip(self.ref, self.sent, self.status, strict=True)
            if st in (200, 201) and r >= 0
        }


class Writer:
    """Open loop: posts at `rate` per second and increments at `increment_rate`, spread over
    the instances' own ports; at most `max_in_flight` unanswered (else counted as skipped)."""

    def __init__(
        self,
        ports: list[int],
        visitors: list[Visitor],
        errors: ErrorLog,
        rate: float = 20.0,
        increment_rate: float = 2.0,
        max_in_flight: int = 400,
    ) -> None:
        self.ports = ports
        self.visitors = visitors
        self.errors = errors
        self.rate = rate
        self.increment_rate = increment_rate
        self.max_in_flight = max_in_flight
        self.posts = Writes("post")
        self.increments = Writes("increment")
        self.in_flight = 0
        self.skipped = 0
        self._tasks: set[asyncio.Task[None]] = set()

    def _request(self, serial: int, kind: str) -> tuple[int, bytes]:
        port = self.ports[serial % len(self.ports)]
        visitor = self.visitors[serial % len(self.visitors)]
        what = "activity" if kind == "post" else "increment"
        return port, post_request(port, visitor, what, serial)

    async def _one(self, writes: Writes, port: int, raw: bytes) -> None:
        sent = now()
        status, ref = 0, -1
        try:
            answer = await net.fetch(port, raw, timeout=15)
            status = answer.status
            if status in (200, 201):
                body = json.loads(answer.body)
                ref = int(body.get("id", body.get("value", -1)))
            else:
                self.errors.add(f"{writes.kind}_{status}")
        except TimeoutError:
            self.errors.add(f"{writes.kind}_timeout")
        except (OSError, ConnectionError, ValueError) as exc:
            self.errors.add(f"{writes.kind}_{type(exc).__name__}")
        finally:
            self.in_flight -= 1
        writes.sent.append(sent)
        writes.done.append(now())
        writes.status.append(status)
        writes.ref.append(ref)

    def submit(self, writes: Writes, serial: int) -> None:
        if self.in_flight >= self.max_in_flight:
            self.skipped += 1
            return
        self.in_flight += 1
        port, raw = self._request(serial, writes.kind)
        task = asyncio.get_running_loop().create_task(self._one(writes, port, raw))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def run(self, seconds: float) -> None:
        t0 = now()
        posts = increments = 0
        while (elapsed := now() - t0) < seconds:
            while posts < int(elapsed * self.rate) + 1:
                self.submit(self.posts, posts)
                posts += 1
            while increments < int(elapsed * self.increment_rate) + 1:
                self.submit(self.increments, increments)
                increments += 1
            await asyncio.sleep(0.01)

    async def drain(self, timeout: float) -> None:
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)
        for task in self._tasks:
            task.cancel()
