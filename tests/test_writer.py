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

    async def __call__(self, message: dict[str, Any]) -> None:
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            raise OSError("connection reset")
        self.chunks.append(message["body"])


def state_of(sub: Subscription) -> WriterState:
    """The state now (a call, so a type checker does not carry an earlier check over)."""
    return sub.state


async def in_state(state: WriterState) -> tuple[Hub, Subscription, Send]:
    """A subscription brought to `state` the way a stream gets there. In SENDING, the
    send is in progress in a task of its own (`sub.task`), waiting on `send.gate`."""
    hub, send = Hub(), Send()
    sub = hub.subscribe()
    if state is not S.OPENING:
        sub.attached(send)  # type: ignore[arg-type]
    if state is S.QUEUED:
        hub.publish(Event(ACTIVITY, "1"))
    elif state is S.SENDING:
        hub.publish(Event(ACTIVITY, "1"))
        send.gate = asyncio.Event()
        sub.task = asyncio.create_task(sub.drain())
        await asyncio.sleep(0)
    elif state is S.CLOSING:
        sub.close()
    elif state is S.CLOSED:
        sub.close()
        sub.finished()
    assert state_of(sub) is state
    return hub, sub, send


async def finish(sub: Subscription, send: Send) -> None:
    """Let a send in progress (SENDING) return."""
    assert send.gate is not None
    assert sub.task is not None
    send.gate.set()
    await asyncio.wait_for(sub.task, 1)


# -- every allowed transition ------------------------------------------------------------


async def test_attached_opening_to_idle_when_nothing_is_buffered() -> None:
    _, sub, send = await in_state(S.OPENING)
    sub.attached(send)  # type: ignore[arg-type]
    assert state_of(sub) is S.IDLE


async def test_attached_opening_to_queued_when_frames_came_while_opening() -> None:
    hub, sub, send = await in_state(S.OPENING)
    hub.publish(Event(ACTIVITY, "1"))
    assert state_of(sub) is S.OPENING  # buffered, nothing else
    sub.attached(send)  # type: ignore[arg-type]
    assert state_of(sub) is S.QUEUED


async def test_attached_after_close_stays_closing() -> None:
    _, sub, send = await in_state(S.CLOSING)
    sub.attached(send)  # type: ignore[arg-type]
    assert state_of(sub) is S.CLOSING


async def test_queued_idle_to_queued_wakes_the_waiting_task() -> None:
    hub, sub, send = await in_state(S.IDLE)
    waiter = asyncio.create_task(sub.wait())
    await asyncio.sleep(0)
    assert not waiter.done()
    hub.publish(Event(ACTIVITY, "1"))
    assert state_of(sub) is S.QUEUED
    await asyncio.wait_for(waiter, 1)
    assert send.chunks == []  # the fan-out loop never writes to the socket


async def test_a_frame_buffered_while_queued_or_sending_changes_no_state() -> None:
    hub, sub, _ = await in_state(S.QUEUED)
    hub.publish(Event(ACTIVITY, "2"))
    assert state_of(sub) is S.QUEUED
    hub, sub, _ = await in_state(S.SENDING)
    hub.publish(Event(ACTIVITY, "2"))
    assert state_of(sub) is S.SENDING


async def test_begin_send_queued_to_sending_takes_everything_buffered() -> None:
    hub, sub, _ = await in_state(S.QUEUED)
    hub.publish(Event(ACTIVITY, "2"))
    chunk, oldest = sub.begin_send()
    assert chunk == FRAME_1 + FRAME_2
    assert oldest > 0
    assert state_of(sub) is S.SENDING
    assert sub.send_started > 0
    assert not sub.pending()


async def test_sent_sending_to_idle_when_nothing_came_meanwhile() -> None:
    _, sub, send = await in_state(S.SENDING)
    assert sub.task is not None
    await asyncio.sleep(0.01)
    assert not sub.task.done()  # waits as the server's send waits
    await finish(sub, send)
    assert send.chunks == [FRAME_1]
    assert state_of(sub) is S.IDLE
    assert sub.send_started == 0.0


async def test_sent_sending_to_queued_when_frames_came_meanwhile() -> None:
    hub, sub, send = await in_state(S.SENDING)
    hub.publish(Event(ACTIVITY, "2"))  # behind the send in progress, in order
    await finish(sub, send)
    assert state_of(sub) is S.QUEUED
    await asyncio.wait_for(sub.drain(), 1)
    assert send.chunks == [FRAME_1, FRAME_2]
    assert state_of(sub) is S.IDLE


async def test_sent_stays_closing_when_closed_during_the_send() -> None:
    _, sub, send = await in_state(S.SENDING)
    sub.close()
    await finish(sub, send)
    assert state_of(sub) is S.CLOSING


async def test_a_send_that_raises_ends_the_stream_as_disconnected() -> None:
    _, sub, send = await in_state(S.SENDING)
    send.fail = True
    await finish(sub, send)
    assert state_of(sub) is S.CLOSING
    assert sub.disconnected


async def test_a_queued_chunk_of_replayed_ids_only_sends_nothing() -> None:
    hub, sub, send = await in_state(S.OPENING)
    hub.publish(Event(ACTIVITY, "1"))  # buffered before the replay said how far it went
    sub.replayed_upto = 1
    sub.attached(send)  # type: ignore[arg-type]
    await asyncio.wait_for(sub.drain(), 1)
    assert send.chunks == []
    assert state_of(sub) is S.IDLE


@pytest.mark.parametrize("state", list(S))
async def test_close_from_every_state(state: WriterState) -> None:
    hub, sub, send = await in_state(state)
    waiter = asyncio.create_task(sub.wait())
    sub.close()
    assert state_of(sub) is (S.CLOSED if state is S.CLOSED else S.CLOSING)
    assert sub.closed
    await asyncio.wait_for(waiter, 1)  # the stream's task is woken to end
    buffered = sub.pending()
    hub.publish(Event(ACTIVITY, "2"))  # dropped: nothing is buffered any more
    assert sub.pending() is buffered
    if send.gate is not None:
        send.gate.set()
        await asyncio.sleep(0)
    assert FRAME_2 not in b"".join(send.chunks) + sub.take()[0]


@pytest.mark.parametrize("state", [S.OPENING, S.IDLE, S.QUEUED, S.SENDING])
async def test_disconnect_closes_and_marks_the_client_gone(state: WriterState) -> None:
    _, sub, _ = await in_state(state)
    sub.disconnect()
    assert state_of(sub) is S.CLOSING
    assert sub.disconnected


async def test_time_out_sending_to_closing_cancels_the_send() -> None:
    hub, sub, send = await in_state(S.SENDING)
    assert hub.stuck_streams(-1.0) == [sub]  # a send in progress, older than "now + 1"
    assert sub.task is not None
    sub.time_out()
    assert state_of(sub) is S.CLOSING
    assert sub.timed_out
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(sub.task, 1)
    assert send.chunks == []


async def test_finished_closing_to_closed() -> None:
    _, sub, _ = await in_state(S.CLOSING)
    sub.finished()
    assert state_of(sub) is S.CLOSED
    sub.finished()  # again: stays CLOSED
    assert state_of(sub) is S.CLOSED


async def test_the_watchdog_sees_only_sends_in_progress() -> None:
    for state in S:
        hub, sub, _ = await in_state(state)
        assert (hub.stuck_streams(-1.0) == [sub]) is (state is S.SENDING), state


# -- every forbidden transition ------------------------------------------------------------

Transition = Callable[[Subscription, Send], Awaitable[None]]


async def _attached(sub: Subscription, send: Send) -> None:
    sub.attached(send)  # type: ignore[arg-type]


async def _queued(sub: Subscription, send: Send) -> None:
    sub.queued()


async def _begin_send(sub: Subscription, send: Send) -> None:
    sub.begin_send()


async def _sent(sub: Subscription, send: Send) -> None:
    sub.sent()


async def _drain(sub: Subscription, send: Send) -> None:
    await sub.drain()


async def _time_out(sub: Subscription, send: Send) -> None:
    sub.time_out()


async def _finished(sub: Subscription, send: Send) -> None:
    sub.finished()


ALLOWED: dict[str, tuple[Transition, set[WriterState]]] = {
    "attached": (_attached, {S.OPENING, S.CLOSING}),
    "queued": (_queued, {S.IDLE}),
    "begin_send": (_begin_send, {S.QUEUED}),
    "sent": (_sent, {S.SENDING, S.CLOSING}),
    "drain": (_drain, {S.QUEUED}),  # named begin_send in its error: its first step
    "time_out": (_time_out, {S.SENDING}),
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
    step = "begin_send" if name == "drain" else name
    with pytest.raises(TransitionError, match=f"{step} from {state.name}"):
        await transition(sub, send)
    assert state_of(sub) is state
    assert not sub.timed_out
