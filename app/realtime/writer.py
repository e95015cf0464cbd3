"""Who may write to one stream's socket, and when: the stream writer's state machine.

Two parties write frames to a stream: the hub's fan-out loop (a frame for a stream that
is idle goes out at once, by stepping the server's ASGI `send` once: a burst reaches the
sockets of clients that read instead of overflowing their buffers before their tasks run)
and the stream's own task (everything else). `StreamWriter.state` says which one owns the
socket; every change of state is one method below, which checks the state it starts
from. The transition table is in docs/architecture.md.

    OPENING            the task sends the response head and the opening frames
    IDLE               nothing buffered, no send in progress: the fan-out loop writes
    WRITING_DIRECT     the fan-out loop is stepping a send (never seen by anyone else)
    WAITING_ON_SOCKET  a direct send could not finish at once: the task finishes it
    DRAINING           frames are buffered: the task takes them and sends them
    CLOSING            the stream is ending: nobody writes another frame
    CLOSED             the task is done with the socket

Outside IDLE the fan-out loop only buffers (subclasses decide how: app.realtime.hub),
and the buffer is empty whenever the state is IDLE.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Iterator
from typing import Any

from litestar.types import Send

from app import metrics

log = logging.getLogger("ripple.stream")


class WriterState(enum.Enum):
    OPENING = "opening"
    IDLE = "idle"
    WRITING_DIRECT = "writing-direct"
    WAITING_ON_SOCKET = "waiting-on-socket"
    DRAINING = "draining"
    CLOSING = "closing"
    CLOSED = "closed"


# Bound once: the fan-out loop compares against these for every stream and every event.
OPENING = WriterState.OPENING
IDLE = WriterState.IDLE
WRITING_DIRECT = WriterState.WRITING_DIRECT
WAITING_ON_SOCKET = WriterState.WAITING_ON_SOCKET
DRAINING = WriterState.DRAINING
CLOSING = WriterState.CLOSING
CLOSED = WriterState.CLOSED

SENDING = frozenset({WAITING_ON_SOCKET, DRAINING})  # a send may be in progress
ENDING = frozenset({CLOSING, CLOSED})


class TransitionError(RuntimeError):
    """A transition asked for in a state it does not start from: a bug, never the client."""


def _body(chunk: bytes) -> dict[str, Any]:
    return {"type": "http.response.body", "body": chunk, "more_body": True}


def _close_steps(steps: Iterator[Any]) -> None:
    """Stop a half-done send (a coroutine gets GeneratorExit at its await; some servers'
    awaitables have no `close`, and hold nothing that needs it)."""
    close = getattr(steps, "close", None)
    if close is not None:
        close()


class StreamWriter:
    """One stream's writer: its state, the send it writes with, and every transition.

    The fan-out loop calls `write_direct` (only in IDLE); the stream's task calls
    `attached`, `wait`, `finish_waiting_send`, `drain` and `finished`; `close`,
    `disconnect` and `time_out` end the stream from anywhere.
    """

    __slots__ = (
        "_send",
        "_steps",
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
        # A direct send that could not finish at once: (its steps, what it last yielded).
        self._steps: tuple[Iterator[Any], Any] | None = None
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

    def _enter(self, state: WriterState) -> None:
        self.state = state
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _idle_or_draining(self) -> None:
        """After a send by the task: back to IDLE, or drain what queued meanwhile."""
        if self.state is not CLOSING:
            self.state = DRAINING if self.pending() else IDLE

    @property
    def closed(self) -> bool:
        return self.state is CLOSING or self.state is CLOSED

    def attached(self, send: Send) -> None:
        """OPENING -> IDLE | DRAINING: the opening frames are out; from now on the fan-out
        loop may write while nothing is buffered."""
        self._expect("attached", OPENING, CLOSING)
        self._send = send
        self._idle_or_draining()

    def write_direct(self, chunk: bytes, received: float) -> None:
        """IDLE -> WRITING_DIRECT -> IDLE | WAITING_ON_SOCKET | CLOSING, from the fan-out loop.

        An ASGI `send` of a body chunk normally returns without suspending (the server
        writes to its transport), so it is stepped once here, as an event loop steps any
        awaitable: a coroutine (uvicorn) or a server's own awaitable (granian's has only
        `__next__`). If it suspends (the client's socket is full), the stream's task
        finishes it (finish_waiting_send) and later frames queue behind it.
        """
        if self.state is not IDLE:
            raise TransitionError(f"write_direct from {self.state.name}")
        self.state = WRITING_DIRECT
        steps = self._send(_body(chunk)).__await__()  # type: ignore[misc,arg-type]
        try:
            awaiting = next(steps)
        except StopIteration:
            self.state = IDLE
            if self.sampled:
                metrics.NOTIFY_TO_SEND.observe(time.monotonic() - received)
            return
        except Exception as exc:  # the connection is gone or broken: end this stream only
            self._failed(exc)
            return
        self._steps = (steps, awaiting)
        self.send_started = time.monotonic()
        self._enter(WAITING_ON_SOCKET)

    async def wait(self) -> None:
        """In the stream's task: until the state is not IDLE (something to do, or the end)."""
        if self.state is not IDLE:
            return
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    async def finish_waiting_send(self) -> None:
        """WAITING_ON_SOCKET -> IDLE | DRAINING | CLOSING, in the stream's task.

        Waits with `asyncio.wait`, never `await`: the send yielded its future, which marks
        it as awaited, and awaiting it a second time is refused.
        """
        self._expect("finish_waiting_send", WAITING_ON_SOCKET)
        assert self._steps is not None
        steps, awaiting = self._steps
        try:
            while True:
                if asyncio.isfuture(awaiting):
                    await asyncio.wait({awaiting})
                else:  # a bare yield: give the loop one turn
                    await asyncio.sleep(0)
                try:
                    awaiting = next(steps)
                except StopIteration:
                    break
                except Exception as exc:
                    self._failed(exc)
                    return
        finally:
            self._steps = None
            self.send_started = 0.0
            _close_steps(steps)
        self._idle_or_draining()

    async def drain(self) -> None:
        """DRAINING -> IDLE | DRAINING (| CLOSING if ended meanwhile), in the stream's task:
        send everything buffered as one chunk."""
        self._expect("drain", DRAINING)
        chunk, oldest = self.take()
        if chunk:
            assert self._send is not None
            self.send_started = time.monotonic()
            try:
                await self._send(_body(chunk))  # type: ignore[arg-type]
            finally:
                self.send_started = 0.0
            if self.sampled and oldest:
                metrics.NOTIFY_TO_SEND.observe(time.monotonic() - oldest)
        self._idle_or_draining()

    def _failed(self, exc: Exception) -> None:
        """WRITING_DIRECT | WAITING_ON_SOCKET -> CLOSING: a write raised; the client is gone."""
        self._expect("write failed", WRITING_DIRECT, WAITING_ON_SOCKET, CLOSING)
        log.info("stream write failed: %s", type(exc).__name__)
        self.disconnected = True
        self._enter(CLOSING)

    def close(self) -> None:
        """Any state but WRITING_DIRECT -> CLOSING (CLOSING and CLOSED stay): shutdown or
        unsubscribe. No frame is written after this; the task ends the response."""
        self._expect("close", OPENING, IDLE, WAITING_ON_SOCKET, DRAINING, CLOSING, CLOSED)
        if self.state is not CLOSED:
            self._enter(CLOSING)

    def disconnect(self) -> None:
        """As close(), for a client that went away: nothing more is sent to it."""
        self.disconnected = True
        self.close()

    def time_out(self) -> None:
        """WAITING_ON_SOCKET | DRAINING -> CLOSING, from the watchdog: the send in progress
        has waited too long; the task is cancelled out of it (its socket is dropped)."""
        self._expect("time_out", WAITING_ON_SOCKET, DRAINING)
        self.timed_out = True
        self._enter(CLOSING)
        if self.task is not None:
            self.task.cancel()

    def finished(self) -> None:
        """CLOSING -> CLOSED, as the stream's task ends: a direct send still waiting is
        dropped (its frame is moot)."""
        self._expect("finished", CLOSING, CLOSED)
        self.state = CLOSED
        if self._steps is not None:
            _close_steps(self._steps[0])
            self._steps = None
            self.send_started = 0.0

    def stuck_since(self, limit: float) -> bool:
        """A send in progress that started before `limit` (monotonic)."""
        return self.state in SENDING and 0.0 < self.send_started < limit
