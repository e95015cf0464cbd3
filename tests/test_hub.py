"""The in-process fan-out: bounded, coalescing, never blocking, frames encoded once."""

import asyncio
from collections.abc import Iterator
from typing import Any

from app.realtime import ACTIVITY, COUNTER, PRESENCE, Event, Hub, Subscription, WriterState, pump


async def test_a_subscriber_that_never_drains_stays_bounded_and_gets_one_resync() -> None:
    hub = Hub(capacity=16)
    stuck = hub.subscribe()
    for n in range(1, 10_001):
        hub.publish(Event(ACTIVITY, str(n)))
    chunk, _ = stuck.take()
    text = chunk.decode()
    assert text.count("event: resync") == 1
    assert "data: overflow" in text
    assert text.count("event: activity") < 16
    # The resync names the newest id, the cursor a client continues from.
    assert "id: 10000\n" in text
    hub.unsubscribe(stuck)


async def test_state_events_coalesce_per_stream_and_throttle_per_worker() -> None:
    hub = Hub(counter_interval=0.2, presence_interval=0.2)
    sub = hub.subscribe()
    for _ in range(100):
        hub.publish(Event(COUNTER, "1"))
        hub.publish(Event(PRESENCE, "abc"))
    chunk, _ = sub.take()
    assert chunk.decode().count("event: counter") == 1  # the first, sent at once
    await asyncio.sleep(0.3)
    chunk, _ = sub.take()
    # ... and the last one, always sent after the interval.
    assert chunk.decode().count("event: counter") == 1
    assert chunk.decode().count("event: presence") == 1
    await asyncio.sleep(0.3)
    assert sub.take()[0] == b""
    hub.unsubscribe(sub)


async def test_every_stream_gets_the_same_frame_object() -> None:
    hub = Hub()
    subs = [hub.subscribe() for _ in range(3)]
    hub.publish(Event(ACTIVITY, "7"))
    frames = [s._activity[0][1] for s in subs]
    assert frames[0] == b"event: activity\nid: 7\ndata: 7\n\n"
    assert frames[0] is frames[1] is frames[2]


async def test_replayed_ids_are_not_sent_twice() -> None:
    hub = Hub()
    sub = hub.subscribe()
    sub.replayed_upto = 5
    for n in (4, 5, 6):
        hub.publish(Event(ACTIVITY, str(n)))
    assert sub.take()[0] == b"event: activity\nid: 6\ndata: 6\n\n"


class RecordingSend:
    """An ASGI `send` that records body chunks; while `gate` is set it waits on it first,
    as a server does when the client's socket is full."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.gate: asyncio.Event | None = None
        self.fail = False

    async def __call__(self, message: dict[str, object]) -> None:
        if self.fail:
            raise OSError("connection reset")
        if self.gate is not None:
            await self.gate.wait()
        if message["type"] == "http.response.body":
            body = message["body"]
            assert isinstance(body, bytes)
            self.chunks.append(body)


async def _never() -> dict[str, object]:
    """An ASGI `receive` of a client that stays connected."""
    await asyncio.Event().wait()
    raise AssertionError("unreachable")


def _stream(hub: Hub, send: RecordingSend) -> tuple[Subscription, asyncio.Task[None]]:
    """A subscription with its stream task running, as app.web.events starts one."""
    sub = hub.subscribe()
    task = asyncio.create_task(pump(sub, send, _never, b"first", []))  # type: ignore[arg-type]
    sub.task = task
    return sub, task


async def _settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


def frame(n: int) -> bytes:
    return f"event: activity\nid: {n}\ndata: {n}\n\n".encode()


async def test_the_stream_task_waits_while_idle_and_is_woken_by_a_frame_or_the_end() -> None:
    hub = Hub()
    send = RecordingSend()
    sub, task = _stream(hub, send)
    await _settle()
    assert sub.state.name == WriterState.IDLE.name
    hub.publish(Event(ACTIVITY, "1"))
    assert sub.state.name == WriterState.QUEUED.name  # buffered; the fan-out loop never sends
    assert send.chunks == [b"first"]
    await _settle()
    assert send.chunks == [b"first", frame(1)]
    assert sub.state.name == WriterState.IDLE.name
    hub.close_all()
    await asyncio.wait_for(task, 1)
    assert sub.state.name == WriterState.CLOSED.name
    assert send.chunks[-1] == b""  # ended cleanly: the client reconnects elsewhere


async def test_frames_behind_a_send_that_waits_queue_in_order_and_go_out_as_one_chunk() -> None:
    hub = Hub()
    send = RecordingSend()
    sub, task = _stream(hub, send)
    await _settle()
    send.gate = asyncio.Event()
    hub.publish(Event(ACTIVITY, "1"))
    await _settle()  # the task's send of frame 1 waits, as for a client that reads slowly
    assert sub.state.name == WriterState.SENDING.name
    assert sub.send_started > 0
    assert hub.stuck_streams(-1.0) == [sub]  # the watchdog can see the send in progress
    hub.publish(Event(ACTIVITY, "2"))
    hub.publish(Event(ACTIVITY, "3"))
    assert sub.state.name == WriterState.SENDING.name
    send.gate.set()
    await _settle()
    assert send.chunks == [b"first", frame(1), frame(2) + frame(3)]
    assert sub.state.name == WriterState.IDLE.name
    assert sub.send_started == 0.0
    hub.unsubscribe(sub)
    await asyncio.wait_for(task, 1)


async def test_a_broken_connection_ends_that_stream_only() -> None:
    hub = Hub()
    broken, healthy = RecordingSend(), RecordingSend()
    (sub_broken, task_broken), (sub_healthy, task_healthy) = (
        _stream(hub, broken),
        _stream(hub, healthy),
    )
    await _settle()
    broken.fail = True
    hub.publish(Event(ACTIVITY, "1"))
    await asyncio.wait_for(task_broken, 1)  # ends without an error
    assert sub_broken.disconnected
    assert sub_broken.state.name == WriterState.CLOSED.name
    await _settle()
    assert healthy.chunks == [b"first", frame(1)]
    assert not sub_healthy.closed
    hub.unsubscribe(sub_healthy)
    await asyncio.wait_for(task_healthy, 1)


class OnlyNext:
    """An iterator with `__next__` and nothing else (no generator `send` or `close`)."""

    def __init__(self, steps: Iterator[object]) -> None:
        self._steps = steps

    def __iter__(self) -> "OnlyNext":
        return self

    def __next__(self) -> object:
        return next(self._steps)


class PlainAwaitable:
    """What some servers' `send` returns (granian's): an awaitable whose iterator has only
    `__next__` (no generator `send` or `close`); it waits on `gate` once if given one."""

    def __init__(self, chunks: list[bytes], body: bytes, gate: asyncio.Future[None] | None):
        self.chunks, self.body, self.gate = chunks, body, gate

    def __await__(self) -> Iterator[object]:
        return OnlyNext(self._steps())

    def _steps(self) -> Iterator[object]:
        if self.gate is not None:
            yield from self.gate.__await__()
        self.chunks.append(self.body)


async def test_a_send_that_returns_a_plain_awaitable_is_awaited_the_same_way() -> None:
    hub = Hub()
    chunks: list[bytes] = []
    gates: list[asyncio.Future[None]] = []

    def send(message: dict[str, Any]) -> PlainAwaitable:
        gate = None
        if message.get("body") == frame(1):  # this one waits, as on a full socket
            gate = asyncio.get_running_loop().create_future()
            gates.append(gate)
        return PlainAwaitable(chunks, message.get("body", b""), gate)

    sub = hub.subscribe()
    task = asyncio.create_task(pump(sub, send, _never, b"first", []))  # type: ignore[arg-type]
    await _settle()
    hub.publish(Event(ACTIVITY, "1"))
    await _settle()
    assert sub.state.name == WriterState.SENDING.name
    hub.publish(Event(ACTIVITY, "2"))  # queued behind it
    gates[0].set_result(None)
    await _settle()
    assert chunks == [b"", b"first", frame(1), frame(2)]  # b"": the response start
    assert sub.state.name == WriterState.IDLE.name
    hub.unsubscribe(sub)
    await asyncio.wait_for(task, 1)
    assert not sub.disconnected
