"""The stream writer's state machine: every allowed transition, and every forbidden one
refused (app.realtime.writer). Driven through the hub with real asyncio sends."""

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

from app.realtime import ACTIVITY, Event, Hub, Subscription, TransitionError, WriterState

S = WriterState
FRAME_1 = b"event: activity\nid: 1\ndata: 1\n\n"
FRAME_2 = b"event: activity\nid: 2\ndata: 2\n\n"


class Send:
    """An ASGI `send` that records body chunks. While `gate` is not set a send waits on it
    (a client's full socket); with `fail` set it raises (a connection reset)."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.gate: asyncio.Event | None = None
        self.fail = False
        self.closed_midway = 0  # sends stopped at their await (GeneratorExit)

    async def __call__(self, message: dict[str, Any]) -> None:
        if self.fail:
            raise OSError("connection reset")
        if self.gate is not None:
            try:
                await self.gate.wait()
            except GeneratorExit:
                self.closed_midway += 1
                raise
            if self.fail:
                raise OSError("connection reset")
        self.chunks.append(message["body"])


def state_of(sub: Subscription) -> WriterState:
    """The state now (a call, so a type checker does not carry an earlier check over)."""
    return sub.state


async def in_state(state: WriterState) -> tuple[Hub, Subscription, Send]:
    """A subscription brought to `state` the way a stream gets there."""
    hub, send = Hub(), Send()
    sub = hub.subscribe()
    if state is S.OPENING:
        pass
    elif state is S.IDLE:
        sub.attached(send)  # type: ignore[arg-type]
    elif state is S.WAITING_ON_SOCKET:
        sub.attached(send)  # type: ignore[arg-type]
        send.gate = asyncio.Event()
        hub.publish(Event(ACTIVITY, "1"))
    elif state is S.DRAINING:
        hub.publish(Event(ACTIVITY, "1"))  # buffered while opening
        sub.attached(send)  # type: ignore[arg-type]
    elif state is S.CLOSING:
        sub.close()
    elif state is S.CLOSED:
        sub.close()
        sub.finished()
    elif state is S.WRITING_DIRECT:
        # Only the fan-out loop sees it, inside one synchronous step of a send: set it
        # directly to check what is refused there.
        sub.attached(send)  # type: ignore[arg-type]
        sub.state = S.WRITING_DIRECT
    assert state_of(sub) is state
    return hub, sub, send


# -- every allowed transition ------------------------------------------------------------


async def test_attached_opening_to_idle_when_nothing_is_buffered() -> None:
    _, sub, send = await in_state(S.OPENING)
    sub.attached(send)  # type: ignore[arg-type]
    assert state_of(sub) is S.IDLE


async def test_attached_opening_to_draining_when_frames_came_while_opening() -> None:
    hub, sub, send = await in_state(S.OPENING)
    hub.publish(Event(ACTIVITY, "1"))
    assert send.chunks == []  # not attached yet: buffered
    sub.attached(send)  # type: ignore[arg-type]
    assert state_of(sub) is S.DRAINING


async def test_attached_after_close_stays_closing() -> None:
    _, sub, send = await in_state(S.CLOSING)
    sub.attached(send)  # type: ignore[arg-type]
    assert state_of(sub) is S.CLOSING


async def test_write_direct_idle_to_idle_when_the_send_completes_at_once() -> None:
    hub, sub, send = await in_state(S.IDLE)
    hub.publish(Event(ACTIVITY, "1"))
    assert send.chunks == [FRAME_1]
    assert state_of(sub) is S.IDLE
    assert not sub.pending()


async def test_write_direct_idle_to_waiting_on_socket_when_the_send_must_wait() -> None:
    hub, sub, send = await in_state(S.IDLE)
    send.gate = asyncio.Event()
    hub.publish(Event(ACTIVITY, "1"))
    assert state_of(sub) is S.WAITING_ON_SOCKET
    assert sub.send_started > 0
    hub.publish(Event(ACTIVITY, "2"))  # queued behind the waiting send
    assert sub.pending()
    assert send.chunks == []


async def test_write_direct_idle_to_closing_when_the_send_fails() -> None:
    hub, sub, send = await in_state(S.IDLE)
    send.fail = True
    hub.publish(Event(ACTIVITY, "1"))
    assert state_of(sub) is S.CLOSING
    assert sub.disconnected


async def test_finish_waiting_send_to_idle_when_nothing_queued_meanwhile() -> None:
    _, sub, send = await in_state(S.WAITING_ON_SOCKET)
    assert send.gate is not None
    finishing = asyncio.create_task(sub.finish_waiting_send())
    await asyncio.sleep(0.01)
    assert not finishing.done()  # waits as the server's send waits
    send.gate.set()
    await asyncio.wait_for(finishing, 1)
    assert send.chunks == [FRAME_1]
    assert state_of(sub) is S.IDLE
    assert sub.send_started == 0.0


async def test_finish_waiting_send_to_draining_when_frames_queued_meanwhile() -> None:
    hub, sub, send = await in_state(S.WAITING_ON_SOCKET)
    assert send.gate is not None
    hub.publish(Event(ACTIVITY, "2"))
    send.gate.set()
    await asyncio.wait_for(sub.finish_waiting_send(), 1)
    assert state_of(sub) is S.DRAINING


async def test_finish_waiting_send_to_closing_when_the_send_fails() -> None:
    _, sub, send = await in_state(S.WAITING_ON_SOCKET)
    assert send.gate is not None
    send.fail = True
    send.gate.set()
    await asyncio.wait_for(sub.finish_waiting_send(), 1)
    assert state_of(sub) is S.CLOSING
    assert sub.disconnected


async def test_finish_waiting_send_stays_closing_when_closed_meanwhile() -> None:
    _, sub, send = await in_state(S.WAITING_ON_SOCKET)
    assert send.gate is not None
    finishing = asyncio.create_task(sub.finish_waiting_send())
    await asyncio.sleep(0.01)
    sub.close()
    send.gate.set()
    await asyncio.wait_for(finishing, 1)
    assert state_of(sub) is S.CLOSING


async def test_drain_to_idle_sends_everything_buffered_as_one_chunk() -> None:
    hub, sub, send = await in_state(S.OPENING)
    hub.publish(Event(ACTIVITY, "1"))
    hub.publish(Event(ACTIVITY, "2"))
    sub.attached(send)  # type: ignore[arg-type]
    await asyncio.wait_for(sub.drain(), 1)
    assert send.chunks == [FRAME_1 + FRAME_2]
    assert state_of(sub) is S.IDLE


async def test_drain_to_draining_when_frames_queue_during_its_send() -> None:
    hub, sub, send = await in_state(S.DRAINING)
    send.gate = asyncio.Event()
    draining = asyncio.create_task(sub.drain())
    await asyncio.sleep(0.01)
    assert sub.send_started > 0
    hub.publish(Event(ACTIVITY, "2"))  # the task owns the socket: buffered, in order
    send.gate.set()
    await asyncio.wait_for(draining, 1)
    assert state_of(sub) is S.DRAINING
    await asyncio.wait_for(sub.drain(), 1)
    assert send.chunks == [FRAME_1, FRAME_2]
    assert state_of(sub) is S.IDLE


async def test_drain_stays_closing_when_closed_during_its_send() -> None:
    _, sub, send = await in_state(S.DRAINING)
    send.gate = asyncio.Event()
    draining = asyncio.create_task(sub.drain())
    await asyncio.sleep(0.01)
    sub.close()
    send.gate.set()
    await asyncio.wait_for(draining, 1)
    assert state_of(sub) is S.CLOSING


@pytest.mark.parametrize(
    "state",
    [S.OPENING, S.IDLE, S.WAITING_ON_SOCKET, S.DRAINING, S.CLOSING, S.CLOSED],
)
async def test_close_from_every_state_but_a_direct_write(state: WriterState) -> None:
    hub, sub, send = await in_state(state)
    waiter = asyncio.create_task(sub.wait())
    sub.close()
    assert state_of(sub) is (S.CLOSED if state is S.CLOSED else S.CLOSING)
    assert sub.closed
    await asyncio.wait_for(waiter, 1)  # the stream's task is woken to end
    buffered = sub.pending()
    hub.publish(Event(ACTIVITY, "2"))  # dropped: nothing is written or buffered any more
    assert sub.pending() is buffered
    assert FRAME_2 not in b"".join(send.chunks) + sub.take()[0]


@pytest.mark.parametrize("state", [S.OPENING, S.IDLE, S.WAITING_ON_SOCKET, S.DRAINING])
async def test_disconnect_closes_and_marks_the_client_gone(state: WriterState) -> None:
    _, sub, _ = await in_state(state)
    sub.disconnect()
    assert state_of(sub) is S.CLOSING
    assert sub.disconnected


@pytest.mark.parametrize("state", [S.WAITING_ON_SOCKET, S.DRAINING])
async def test_time_out_closes_and_cancels_the_stream_task(state: WriterState) -> None:
    _, sub, _ = await in_state(state)
    sub.task = asyncio.create_task(asyncio.sleep(10))
    sub.time_out()
    assert state_of(sub) is S.CLOSING
    assert sub.timed_out
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(sub.task, 1)


async def test_finished_closing_to_closed_drops_a_send_still_waiting() -> None:
    _, sub, send = await in_state(S.WAITING_ON_SOCKET)
    sub.close()
    sub.finished()
    assert state_of(sub) is S.CLOSED
    assert send.closed_midway == 1  # the half-done send was stopped at its await
    assert sub.send_started == 0.0
    sub.finished()  # again: stays CLOSED
    assert state_of(sub) is S.CLOSED


async def test_the_watchdog_sees_only_sends_in_progress() -> None:
    hub, sub, _ = await in_state(S.WAITING_ON_SOCKET)
    assert hub.stuck_streams(-1.0) == [sub]  # any send in progress is older than "now + 1"
    _, idle, _ = await in_state(S.IDLE)
    assert not idle.stuck_since(float("inf"))


# -- every forbidden transition ------------------------------------------------------------

Transition = Callable[[Subscription, Send], Awaitable[None]]


async def _attached(sub: Subscription, send: Send) -> None:
    sub.attached(send)  # type: ignore[arg-type]


async def _write_direct(sub: Subscription, send: Send) -> None:
    sub.write_direct(FRAME_2, 0.0)


async def _finish(sub: Subscription, send: Send) -> None:
    await sub.finish_waiting_send()


async def _drain(sub: Subscription, send: Send) -> None:
    await sub.drain()


async def _close(sub: Subscription, send: Send) -> None:
    sub.close()


async def _time_out(sub: Subscription, send: Send) -> None:
    sub.time_out()


async def _finished(sub: Subscription, send: Send) -> None:
    sub.finished()


ALLOWED: dict[str, tuple[Transition, set[WriterState]]] = {
    "attached": (_attached, {S.OPENING, S.CLOSING}),
    "write_direct": (_write_direct, {S.IDLE}),
    "finish_waiting_send": (_finish, {S.WAITING_ON_SOCKET}),
    "drain": (_drain, {S.DRAINING}),
    "close": (_close, set(S) - {S.WRITING_DIRECT}),
    "time_out": (_time_out, {S.WAITING_ON_SOCKET, S.DRAINING}),
    "finished": (_finished, {S.CLOSING, S.CLOSED}),
}


def _forbidden() -> Iterator[tuple[str, WriterState]]:
    for name, (_, allowed) in ALLOWED.items():
        for state in S:
            if state not in allowed:
                yield name, state


@pytest.mark.parametrize(("name", "state"), list(_forbidden()))
async def test_a_forbidden_transition_raises_and_changes_nothing(
    name: str, state: WriterState
) -> None:
    _, sub, send = await in_state(state)
    transition = ALLOWED[name][0]
    with pytest.raises(TransitionError, match=f"{name} from {state.name}"):
        await transition(sub, send)
    assert state_of(sub) is state
    assert not sub.timed_out
