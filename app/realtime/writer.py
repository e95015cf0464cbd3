"""Who may write to one stream's socket, and when: the stream writer's state machine.

Only the stream's own task writes to its socket. The hub's fan-out loop never does: it
buffers a frame and, if the task was idle, wakes it. `StreamWriter.state` says what the
task is doing; every change of state is one method below, which checks the state it
starts from. The transition table is in docs/architecture.md.

    OPENING   the task sends the response head and the opening frames; frames buffer
    IDLE      nothing buffered, no send in progress: the task waits
    QUEUED    frames are buffered and the task has been woken to send them
    SENDING   the task is in a send; frames arriving meanwhile buffer behind it
    CLOSING   the stream is ending: no frame is written any more
    CLOSED    the task is done with the socket

The buffer is empty whenever the state is IDLE. What is buffered, and how (bounded,
coalesced), is the subclass's business: app.realtime.hub.Subscription.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from typing import Any

from litestar.types import Send

from app import metrics

log = logging.getLogger("ripple.stream")


class WriterState(enum.Enum):
    OPENING = "opening"
    IDLE = "idle"
    QUEUED = "queued"
    SENDING = "sending"
    CLOSING = "closing"
    CLOSED = "closed"


# Bound once: the fan-out loop compares against these for every stream and every event.
OPENING = WriterState.OPENING
IDLE = WriterState.IDLE
QUEUED = WriterState.QUEUED
SENDING = WriterState.SENDING
CLOSING = WriterState.CLOSING
CLOSED = WriterState.CLOSED

ENDING = frozenset({CLOSING, CLOSED})


class TransitionError(RuntimeError):
    """A transition asked for in a state it does not start from: a bug, never the client."""


class StreamWriter:
    """One stream's writer: its state and every transition.

    The fan-out loop calls `queued` (after buffering a frame while IDLE); the stream's
    task calls `attached`, `wait`, `drain` (`begin_send` then `sent`) and `finished`;
    `close`, `disconnect` and `time_out` end the stream from anywhere.
    """

    __slots__ = (
        "_send",
        "_waiter",
        "disconnected",
        "sampled",
        "send_started",
        "state",
        "task",
        "timed_out",
    )

    def __init__(self, *, sampled: bool) -> None:
        self.state = OPENING
        self._send: Send | None = None
        self._waiter: asyncio.Future[None] | None = None
        self.send_started = 0.0  # monotonic start of the send in progress, 0 if none
        self.sampled = sampled  # this stream reports its latency
        self.disconnected = False  # the client went away (nothing more can reach it)
        self.timed_out = False  # the watchdog ended it: its send waited too long
        self.task: asyncio.Task[Any] | None = None  # the stream's task, for the watchdog

    # -- what subclasses buffer ------------------------------------------------------

    def pending(self) -> bool:
        """Anything buffered."""
        raise NotImplementedError

    def take(self) -> tuple[bytes, float]:
        """Everything buffered, as one chunk, and the oldest arrival time in it (0 if none)."""
        raise NotImplementedError

    # -- transitions ------------------------------------------------------------------

    def _expect(self, transition: str, *allowed: WriterState) -> None:
        if self.state not in allowed:
            raise TransitionError(f"{transition} from {self.state.name}")

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _after_send(self) -> None:
        """Back to IDLE, or QUEUED if frames came meanwhile (CLOSING stays)."""
        if self.state is not CLOSING:
            self.state = QUEUED if self.pending() else IDLE

    @property
    def closed(self) -> bool:
        return self.state is CLOSING or self.state is CLOSED

    def attached(self, send: Send) -> None:
        """OPENING -> IDLE | QUEUED, in the task: the opening frames are out; frames that
        came meanwhile are sent next (CLOSING stays)."""
        self._expect("attached", OPENING, CLOSING)
        self._send = send
        self._after_send()

    def queued(self) -> None:
        """IDLE -> QUEUED, from the fan-out loop once it has buffered a frame: wake the task.
        (In OPENING, QUEUED and SENDING a buffered frame changes nothing: the task will
        look at the buffer when its current step ends.)"""
        if self.state is not IDLE:
            raise TransitionError(f"queued from {self.state.name}")
        self.state = QUEUED
        self._wake()

    async def wait(self) -> None:
        """In the task: until the state is not IDLE (frames to send, or the end)."""
        if self.state is not IDLE:
            return
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def begin_send(self) -> tuple[bytes, float]:
        """QUEUED -> SENDING, in the task: take everything buffered (one chunk)."""
        self._expect("begin_send", QUEUED)
        self.state = SENDING
        self.send_started = time.monotonic()
        return self.take()

    def sent(self) -> None:
        """SENDING -> IDLE | QUEUED, in the task, when its send has returned (CLOSING stays:
        the stream was closed meanwhile)."""
        self._expect("sent", SENDING, CLOSING)
        self.send_started = 0.0
        self._after_send()

    async def drain(self) -> None:
        """QUEUED -> SENDING -> IDLE | QUEUED, in the task: send what is buffered.

        Awaiting the server's `send` is the backpressure: it returns once the server has
        taken the chunk, and waits while the client's socket is full (the watchdog bounds
        that wait). Any awaitable works: uvicorn's coroutine, granian's own awaitable.
        """
        chunk, oldest = self.begin_send()
        if chunk:
            assert self._send is not None
            try:
                await self._send({"type": "http.response.body", "body": chunk, "more_body": True})
            except Exception as exc:  # the connection is gone or broken: end this stream only
                log.info("stream write failed: %s", type(exc).__name__)
                self.disconnect()
                return
            if self.sampled and oldest:
                metrics.NOTIFY_TO_SEND.observe(time.monotonic() - oldest)
        self.sent()

    def close(self) -> None:
        """Any state -> CLOSING (CLOSED stays): shutdown or unsubscribe. No frame is
        written after this; the task ends the response."""
        if self.state is not CLOSED:
            self.state = CLOSING
            self._wake()

    def disconnect(self) -> None:
        """As close(), for a client that went away: nothing more is sent to it."""
        self.disconnected = True
        self.close()

    def time_out(self) -> None:
        """SENDING -> CLOSING, from the watchdog: the send in progress has waited too long;
        the task is cancelled out of it (the server drops the socket)."""
        self._expect("time_out", SENDING)
        self.timed_out = True
        self.state = CLOSING
        if self.task is not None:
            self.task.cancel()

    def finished(self) -> None:
        """CLOSING -> CLOSED, as the task ends (CLOSED stays)."""
        self._expect("finished", CLOSING, CLOSED)
        self.state = CLOSED
        self.send_started = 0.0

    def stuck_since(self, limit: float) -> bool:
        """A send in progress that started before `limit` (monotonic)."""
        return self.state is SENDING and self.send_started < limit
