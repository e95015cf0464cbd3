"""In-process fan-out from the one listener to every stream open on this worker.

publish() never waits. A stream with nothing queued and no send in progress gets the
frame written at once, from the fan-out loop itself (see Subscription.write_now);
otherwise the frame goes into the stream's bounded buffer, which the stream's own task
drains. Counter and presence events are state ("the value changed"), so only the newest
matters: they are throttled per worker and coalesced per stream. Feed events are kept
in order; a stream that falls too far behind gets one `resync` instead.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import deque
from collections.abc import Iterator
from typing import Any

from litestar.types import Send

from app import metrics
from app.realtime.events import ACTIVITY, COUNTER, PING, PRESENCE, RESYNC, Event, encode_frame

log = logging.getLogger("ripple.stream")

_ids = itertools.count(1)


def _close(steps: Iterator[Any]) -> None:
    """Stop a half-done send (a coroutine gets GeneratorExit at its await)."""
    close = getattr(steps, "close", None)
    if close is not None:
        close()


class Subscription:
    """One open stream's buffer. Filled by the hub, drained by the stream's writer."""

    __slots__ = (
        "_activity",
        "_capacity",
        "_inflight",
        "_resync",
        "_send",
        "_state",
        "_waiter",
        "closed",
        "disconnected",
        "id",
        "replayed_upto",
        "sampled",
        "send_started",
        "task",
        "timed_out",
        "writing",
    )

    def __init__(self, capacity: int) -> None:
        self.id = next(_ids)
        self._capacity = capacity
        self._activity: deque[tuple[int, bytes, float]] = deque()
        self._state: dict[str, tuple[bytes, float]] = {}
        self._resync: bytes | None = None
        self._waiter: asyncio.Future[None] | None = None
        self.closed = False
        self.disconnected = False
        self.timed_out = False
        self.replayed_upto = 0  # feed ids up to this were sent by the replay
        self.sampled = self.id % 16 == 0  # one stream in 16 reports latency
        self.send_started = 0.0  # monotonic time of the send in progress, 0 if none
        self.task: asyncio.Task[object] | None = None
        self._send: Send | None = None  # set once the stream's first frames are out
        self.writing = False  # the stream's task is in a send of its own
        # A direct write the server could not finish at once: (its steps, what it awaits).
        self._inflight: tuple[Iterator[Any], Any] | None = None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def attach(self, send: Send) -> None:
        """From now on the hub may write frames itself while nothing is queued."""
        self._send = send

    def _direct(self) -> bool:
        return (
            self._send is not None
            and not self.writing
            and self._inflight is None
            and not self.closed
            and not self.pending()
        )

    def write_now(self, chunk: bytes, received: float) -> None:
        """Write a chunk from the fan-out loop, without waking the stream's task.

        An ASGI `send` of a body chunk normally returns without suspending (the server
        writes to its transport); stepping it here saves a task wake-up and a switch per
        stream per event. If it must wait (the client's socket is full), the stream's
        task takes over the rest of that send (finish_inflight), and frames queue behind it.
        """
        assert self._send is not None
        message = {"type": "http.response.body", "body": chunk, "more_body": True}
        # Any awaitable, stepped as an event loop steps it: a coroutine (uvicorn) or a
        # server's own awaitable (granian's has no `send`, only `__next__`).
        steps = self._send(message).__await__()  # type: ignore[arg-type]
        try:
            awaiting = next(steps)
        except StopIteration:
            if self.sampled:
                metrics.NOTIFY_TO_SEND.observe(time.monotonic() - received)
            return
        except Exception as exc:  # the connection is gone or broken: end this stream only
            self._write_failed(exc)
            return
        self._inflight = (steps, awaiting)
        self.send_started = time.monotonic()
        self._wake()

    async def finish_inflight(self) -> None:
        """Complete a direct write that had to wait, in the stream's own task."""
        if self._inflight is None:
            return
        steps, awaiting = self._inflight
        try:
            while True:
                if asyncio.isfuture(awaiting):
                    # Not `await awaiting`: the future was yielded by the send (which marks it
                    # as awaited) and no task took it, so awaiting it again is refused.
                    await asyncio.wait({awaiting})
                else:  # a bare yield: give the loop one turn
                    await asyncio.sleep(0)
                try:
                    awaiting = next(steps)
                except StopIteration:
                    return
                except Exception as exc:
                    self._write_failed(exc)
                    return
        finally:
            self._inflight = None
            self.send_started = 0.0
            _close(steps)

    def _write_failed(self, exc: Exception) -> None:
        log.info("stream write failed: %s", type(exc).__name__)
        self.disconnected = True
        self.close()

    def abandon_inflight(self) -> None:
        """The stream is over: drop a direct write still waiting."""
        if self._inflight is not None:
            _close(self._inflight[0])
            self._inflight = None

    def offer_activity(
        self, activity_id: int, frame: bytes, received: float, resync: bytes
    ) -> None:
        if self._direct():
            if activity_id > self.replayed_upto:
                self.write_now(frame, received)
            return
        if len(self._activity) >= self._capacity:
            self._activity.clear()
            self._resync = resync
            metrics.RESYNCS_SENT.labels("overflow").inc()
        else:
            self._activity.append((activity_id, frame, received))
        self._wake()

    def offer_state(self, kind: str, frame: bytes, received: float) -> bool:
        """Keep only the newest frame of a kind; True if an older one was replaced."""
        if self._direct():
            self.write_now(frame, received)
            return False
        replaced = kind in self._state
        self._state[kind] = (frame, received)
        self._wake()
        return replaced

    def offer_resync(self, frame: bytes) -> None:
        if self._direct():
            self.write_now(frame, time.monotonic())
            return
        self._activity.clear()
        self._resync = frame
        self._wake()

    def close(self) -> None:
        self.closed = True
        self._wake()

    def take(self) -> tuple[bytes, float]:
        """Everything buffered, as one chunk, and the oldest arrival time in it (0 if none)."""
        parts: list[bytes] = []
        oldest = 0.0
        if self._resync is not None:
            parts.append(self._resync)
            self._resync = None
        while self._activity:
            activity_id, frame, received = self._activity.popleft()
            if activity_id > self.replayed_upto:
                parts.append(frame)
                oldest = received if not oldest else min(oldest, received)
        if self._state:
            for frame, received in self._state.values():
                parts.append(frame)
                oldest = received if not oldest else min(oldest, received)
            self._state.clear()
        return b"".join(parts), oldest

    def pending(self) -> bool:
        return bool(self._resync or self._activity or self._state)

    async def wait(self) -> None:
        """Until something is buffered, a direct write waits to be finished, or the
        stream is closed."""
        if self.closed or self.pending() or self._inflight is not None:
            return
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None


class Hub:
    """Fan-out for one worker. All methods run on the event loop thread."""

    def __init__(
        self,
        *,
        capacity: int = 512,
        counter_interval: float = 0.12,  # a little over 0.1 s: at most 10 a second, jitter included
        presence_interval: float = 0.25,
    ) -> None:
        self._subs: set[Subscription] = set()
        self._capacity = capacity
        self._intervals = {COUNTER: counter_interval, PRESENCE: presence_interval}
        self._last_sent: dict[str, float] = {}
        self._pending: dict[str, Event] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self.newest_activity_id = 0
        # Bumped by every resync (an item hidden, items pruned, notifications missed while
        # the listener was away): caches of rendered items compare it to know to start over.
        self.resync_generation = 0

    def __len__(self) -> int:
        return len(self._subs)

    def subscribe(self) -> Subscription:
        sub = Subscription(self._capacity)
        self._subs.add(sub)
        metrics.OPEN_STREAMS.inc()
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        if sub in self._subs:
            self._subs.discard(sub)
            metrics.OPEN_STREAMS.dec()
        sub.close()

    def publish(self, event: Event) -> None:
        """Hand an event from the listener to every stream. Never blocks."""
        metrics.EVENTS_RECEIVED.labels(event.kind).inc()
        interval = self._intervals.get(event.kind)
        if interval is None:
            self._deliver(event)
            return
        now = time.monotonic()
        if event.kind in self._timers:  # a flush is already due: newest wins
            if event.kind in self._pending:
                metrics.EVENTS_COALESCED.labels(event.kind).inc()
            self._pending[event.kind] = event
            return
        wait = self._last_sent.get(event.kind, 0.0) + interval - now
        if wait <= 0:
            self._deliver(event)
            return
        self._pending[event.kind] = event
        loop = asyncio.get_running_loop()
        self._timers[event.kind] = loop.call_later(wait, self._flush, event.kind)

    def _flush(self, kind: str) -> None:
        self._timers.pop(kind, None)
        event = self._pending.pop(kind, None)
        if event is not None:
            self._deliver(event)

    def _deliver(self, event: Event) -> None:
        received = time.monotonic()
        kind = event.kind
        if kind in self._intervals:
            self._last_sent[kind] = received
        if kind == ACTIVITY:
            activity_id = event.activity_id
            self.newest_activity_id = max(self.newest_activity_id, activity_id)
            frame = encode_frame(ACTIVITY, event.ref, event_id=activity_id)
            overflow = encode_frame(RESYNC, "overflow", event_id=self.newest_activity_id)
            for sub in self._subs:
                sub.offer_activity(activity_id, frame, received, overflow)
        elif kind == RESYNC:
            self.resync_all(event.ref or "bus")
            return
        else:
            frame = encode_frame(kind, event.ref)
            coalesced = 0
            for sub in self._subs:
                coalesced += sub.offer_state(kind, frame, received)
            if coalesced:
                metrics.EVENTS_COALESCED.labels(kind).inc(coalesced)
        metrics.FRAMES_FANNED_OUT.labels(kind).inc(len(self._subs))

    def resync_all(self, reason: str) -> None:
        """Every stream must re-read everything (e.g. the listener missed notifications)."""
        self.resync_generation += 1
        frame = encode_frame(RESYNC, reason, event_id=self.newest_activity_id)
        for sub in self._subs:
            sub.offer_resync(frame)
        metrics.RESYNCS_SENT.labels(reason).inc(len(self._subs))

    def ping_all(self) -> None:
        frame = encode_frame(PING, "")
        received = time.monotonic()
        for sub in self._subs:
            sub.offer_state(PING, frame, received)

    def close_all(self) -> None:
        for sub in list(self._subs):
            sub.close()
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()

    def stuck_streams(self, send_timeout: float) -> list[Subscription]:
        """Streams whose current send has waited longer than send_timeout."""
        limit = time.monotonic() - send_timeout
        return [s for s in self._subs if s.send_started and s.send_started < limit]
