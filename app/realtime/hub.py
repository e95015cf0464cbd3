"""In-process fan-out from the one listener to every stream open on this worker.

publish() never waits. Each frame is encoded once per event. A stream whose writer is
idle (nothing queued, no send in progress) gets the frame written at once, from the
fan-out loop itself; otherwise the frame goes into the stream's bounded buffer, which the
stream's own task drains (app.realtime.writer says who writes when). Counter and
presence events are state ("the value changed"), so only the newest matters: they are
throttled per worker and coalesced per stream. Feed events are kept in order; a stream
that falls too far behind gets one `resync` instead.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import deque

from app import metrics
from app.realtime.wireformat import ACTIVITY, COUNTER, PING, PRESENCE, RESYNC, Event, encode_frame
from app.realtime.writer import ENDING, IDLE, StreamWriter

log = logging.getLogger("ripple.hub")
_ids = itertools.count(1)


class Subscription(StreamWriter):
    """One open stream: what the hub buffers for it, and (from StreamWriter) who writes it.

    The fan-out loop writes a frame at once while the writer is IDLE; in any other state
    it buffers the frame here (bounded, coalesced), or drops it once the stream is ending.
    """

    __slots__ = ("_activity", "_capacity", "_resync", "_state", "id", "replayed_upto")

    def __init__(self, capacity: int) -> None:
        self.id = next(_ids)
        super().__init__(sampled=self.id % 16 == 0)  # one stream in 16 reports latency
        self._capacity = capacity
        self._activity: deque[tuple[int, bytes, float]] = deque()
        self._state: dict[str, tuple[bytes, float]] = {}
        self._resync: bytes | None = None
        self.replayed_upto = 0  # feed ids up to this were sent by the replay

    def offer_activity(
        self, activity_id: int, frame: bytes, received: float, resync: bytes
    ) -> None:
        state = self.state
        if state is IDLE:
            if activity_id > self.replayed_upto:
                self.write_direct(frame, received)
            return
        if state in ENDING:
            return
        if len(self._activity) >= self._capacity:
            self._activity.clear()
            self._resync = resync
            metrics.RESYNCS_SENT.labels("overflow").inc()
        else:
            self._activity.append((activity_id, frame, received))

    def offer_state(self, kind: str, frame: bytes, received: float) -> bool:
        """Keep only the newest frame of a kind; True if an older one was replaced."""
        state = self.state
        if state is IDLE:
            self.write_direct(frame, received)
            return False
        if state in ENDING:
            return False
        replaced = kind in self._state
        self._state[kind] = (frame, received)
        return replaced

    def offer_resync(self, frame: bytes) -> None:
        state = self.state
        if state is IDLE:
            self.write_direct(frame, time.monotonic())
            return
        if state in ENDING:
            return
        self._activity.clear()
        self._resync = frame

    def take(self) -> tuple[bytes, float]:
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


# Streams offered a frame per pass of the event loop (see Hub._fan_out). Writing a frame
# costs about 10 to 15 µs (docs/benchmarks.md), so a slice holds the loop for 5 to 8 ms.
FANOUT_SLICE = 500


class _FanOut:
    """One frame being offered to the streams that were open when its event came."""

    __slots__ = (
        "activity_id",
        "coalesced",
        "done",
        "frame",
        "kind",
        "next",
        "overflow",
        "received",
        "subs",
    )

    def __init__(
        self,
        subs: set[Subscription],
        kind: str,
        activity_id: int,
        frame: bytes,
        received: float,
        overflow: bytes = b"",
    ) -> None:
        self.subs = tuple(subs)
        self.kind = kind
        self.activity_id = activity_id
        self.frame = frame
        self.received = received
        self.overflow = overflow
        self.next = 0
        self.done = False
        self.coalesced = 0

    def run(self, budget: int) -> int:
        """Offer the frame to up to `budget` more streams; how many were offered."""
        start = self.next
        end = min(start + budget, len(self.subs))
        part = self.subs[start:end] if start or end < len(self.subs) else self.subs
        kind, frame, received = self.kind, self.frame, self.received
        if kind == ACTIVITY:
            activity_id, overflow = self.activity_id, self.overflow
            for sub in part:
                sub.offer_activity(activity_id, frame, received, overflow)
        elif kind == RESYNC:
            for sub in part:
                sub.offer_resync(frame)
        else:
            coalesced = 0
            for sub in part:
                coalesced += sub.offer_state(kind, frame, received)
            self.coalesced += coalesced
        self.next = end
        self.done = end >= len(self.subs)
        return end - start


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
        self._backlog: deque[_FanOut] = deque()  # events being offered, oldest first
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
            self._fan_out(_FanOut(self._subs, kind, activity_id, frame, received, overflow))
        elif kind == RESYNC:
            self.resync_all(event.ref or "bus")
        else:
            self._fan_out(_FanOut(self._subs, kind, 0, encode_frame(kind, event.ref), received))

    def resync_all(self, reason: str) -> None:
        """Every stream must re-read everything (e.g. the listener missed notifications)."""
        self.resync_generation += 1
        frame = encode_frame(RESYNC, reason, event_id=self.newest_activity_id)
        self._fan_out(_FanOut(self._subs, RESYNC, 0, frame, time.monotonic()))
        metrics.RESYNCS_SENT.labels(reason).inc(len(self._subs))

    # -- fan-out in slices ---------------------------------------------------------------

    def _fan_out(self, job: _FanOut) -> None:
        """Offer a frame to every stream, in event order, `FANOUT_SLICE` streams per pass
        of the event loop: one event to 5,000 streams would otherwise hold a worker for
        tens of milliseconds, and every request that arrived meanwhile (a POST) waits."""
        self._backlog.append(job)
        if len(self._backlog) == 1:
            self._pump()

    def _pump(self) -> None:
        budget = FANOUT_SLICE
        backlog = self._backlog
        while backlog and budget > 0:
            job = backlog[0]
            try:
                budget -= job.run(budget)
            except Exception:  # never let one event stop every later one on this worker
                log.exception("fan-out of a %s event failed; the rest of it is dropped", job.kind)
                job.done = True
            if job.done:
                backlog.popleft()
                metrics.FRAMES_FANNED_OUT.labels(job.kind).inc(len(job.subs))
                if job.coalesced:
                    metrics.EVENTS_COALESCED.labels(job.kind).inc(job.coalesced)
        if backlog:
            asyncio.get_running_loop().call_soon(self._pump)

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
        return [s for s in self._subs if s.stuck_since(limit)]
