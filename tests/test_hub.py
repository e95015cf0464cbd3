"""The in-process fan-out: bounded, coalescing, never blocking, frames encoded once."""

import asyncio
from collections.abc import Iterator
from typing import Any

from app.realtime import ACTIVITY, COUNTER, PRESENCE, Event, Hub, Subscription, WriterState
from app.realtime.hub import FANOUT_SLICE


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


async def test_the_stream_task_waits_while_idle_and_wakes_for_a_send_that_waits_or_the_end() -> (
    None
):
    hub = Hub()
    send = RecordingSend()
    sub = hub.subscribe()
    sub.attached(send)  # type: ignore[arg-type]
    waiter = asyncio.create_task(sub.wait())
    await asyncio.sleep(0)
    assert not waiter.done()
    hub.publish(Event(ACTIVITY, "1"))  # written by the fan-out loop: nothing for the task
    await asyncio.sleep(0)
    assert not waiter.done()
    send.gate = asyncio.Event()
    hub.publish(Event(ACTIVITY, "2"))  # this send must wait: the task is woken to finish it
    await asyncio.wait_for(waiter, 1)
    assert sub.state.name == WriterState.WAITING_ON_SOCKET.name
    send.gate.set()
    await asyncio.wait_for(sub.finish_waiting_send(), 1)
    assert sub.state.name == WriterState.IDLE.name
    waiter = asyncio.create_task(sub.wait())
    await asyncio.sleep(0)
    hub.close_all()
    await asyncio.wait_for(waiter, 1)
    assert sub.closed
    assert send.chunks == [
        b"event: activity\nid: 1\ndata: 1\n\n",
        b"event: activity\nid: 2\ndata: 2\n\n",
    ]


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
        body = message["body"]
        assert isinstance(body, bytes)
        self.chunks.append(body)


async def test_an_idle_attached_stream_is_written_from_the_fan_out_loop() -> None:
    hub = Hub()
    send = RecordingSend()
    sub = hub.subscribe()
    sub.replayed_upto = 5
    sub.attached(send)  # type: ignore[arg-type]
    for n in (5, 6, 7):
        hub.publish(Event(ACTIVITY, str(n)))
    # Written at once, in order, replayed ids skipped, nothing left for the stream's task.
    assert send.chunks == [
        b"event: activity\nid: 6\ndata: 6\n\n",
        b"event: activity\nid: 7\ndata: 7\n\n",
    ]
    assert not sub.pending()
    hub.unsubscribe(sub)


async def test_a_write_that_must_wait_is_finished_by_the_stream_and_later_frames_queue() -> None:
    hub = Hub()
    send = RecordingSend()
    send.gate = asyncio.Event()
    sub = hub.subscribe()
    sub.attached(send)  # type: ignore[arg-type]
    hub.publish(Event(ACTIVITY, "1"))  # the send suspends: handed to the stream
    hub.publish(Event(ACTIVITY, "2"))  # queued behind it, not written around it
    assert send.chunks == []
    assert sub.send_started > 0  # the watchdog can see the stuck send
    waiter = asyncio.create_task(sub.wait())
    await asyncio.wait_for(waiter, 1)  # the stream's task is woken to finish it
    finishing = asyncio.create_task(sub.finish_waiting_send())
    for _ in range(5):  # it waits, as a server's send waits for the client to read
        await asyncio.sleep(0)
    assert not finishing.done()
    send.gate.set()
    await asyncio.wait_for(finishing, 1)
    assert send.chunks == [b"event: activity\nid: 1\ndata: 1\n\n"]
    assert sub.send_started == 0.0
    assert sub.state.name == WriterState.DRAINING.name  # frame 2 is queued: the task sends it next
    await asyncio.wait_for(sub.drain(), 1)
    assert send.chunks[1:] == [b"event: activity\nid: 2\ndata: 2\n\n"]
    assert sub.state.name == WriterState.IDLE.name
    hub.unsubscribe(sub)


async def test_a_broken_connection_ends_that_stream_only() -> None:
    hub = Hub()
    broken, healthy = RecordingSend(), RecordingSend()
    broken.fail = True
    subs = [hub.subscribe(), hub.subscribe()]
    subs[0].attached(broken)  # type: ignore[arg-type]
    subs[1].attached(healthy)  # type: ignore[arg-type]
    hub.publish(Event(ACTIVITY, "1"))
    assert subs[0].closed
    assert subs[0].disconnected
    assert healthy.chunks == [b"event: activity\nid: 1\ndata: 1\n\n"]
    for sub in subs:
        hub.unsubscribe(sub)


class OnlyNext:
    """An iterator with `__next__` and nothing else (no generator `send` or `close`)."""

    def __init__(self, steps: Iterator[object]) -> None:
        self._steps = steps

    def __iter__(self) -> "OnlyNext":
        return self

    def __next__(self) -> object:
        return next(self._steps)


class PlainAwaitable:
    """What some servers' `send` returns: an awaitable whose iterator has only `__next__`
    (no generator `send` or `close`); it waits on `gate` once if given one."""

    def __init__(self, chunks: list[bytes], body: bytes, gate: asyncio.Future[None] | None):
        self.chunks, self.body, self.gate = chunks, body, gate

    def __await__(self) -> Iterator[object]:
        return OnlyNext(self._steps())

    def _steps(self) -> Iterator[object]:
        if self.gate is not None:
            yield from self.gate.__await__()  # marks the future as awaited, as `await` does
        self.chunks.append(self.body)


async def test_a_send_that_returns_a_plain_awaitable_is_stepped_the_same_way() -> None:
    hub = Hub()
    chunks: list[bytes] = []
    gates: list[asyncio.Future[None]] = []

    def send(message: dict[str, Any]) -> PlainAwaitable:
        gate = asyncio.get_running_loop().create_future() if gates == [] else None
        if gate is not None:
            gates.append(gate)
        return PlainAwaitable(chunks, message["body"], gate)

    sub = hub.subscribe()
    sub.attached(send)  # type: ignore[arg-type]
    hub.publish(Event(ACTIVITY, "1"))  # waits on its gate: handed to the stream's task
    assert chunks == []
    finishing = asyncio.create_task(sub.finish_waiting_send())
    for _ in range(5):
        await asyncio.sleep(0)
    assert not finishing.done()
    gates[0].set_result(None)
    await asyncio.wait_for(finishing, 1)
    hub.publish(Event(ACTIVITY, "2"))  # completes at once, from the fan-out loop
    assert chunks == [
        b"event: activity\nid: 1\ndata: 1\n\n",
        b"event: activity\nid: 2\ndata: 2\n\n",
    ]
    assert not sub.closed
    hub.unsubscribe(sub)


async def test_a_large_fan_out_is_written_in_slices_that_let_other_work_run_between() -> None:
    """One event to 1,200 streams: 500 per pass of the loop (FANOUT_SLICE), work that
    arrived meanwhile runs between passes, and every stream still gets every frame in
    event order."""
    hub = Hub()
    sends = [RecordingSend() for _ in range(1200)]
    for send in sends:
        hub.subscribe().attached(send)  # type: ignore[arg-type]
    ran_between: list[int] = []

    def written() -> int:
        return sum(1 for send in sends if send.chunks)

    hub.publish(Event(ACTIVITY, "1"))
    hub.publish(Event(ACTIVITY, "2"))  # queued behind the first event's slices
    assert written() == FANOUT_SLICE
    asyncio.get_running_loop().call_soon(lambda: ran_between.append(written()))
    for _ in range(10):
        await asyncio.sleep(0)
    assert ran_between == [FANOUT_SLICE * 2]  # after one more slice, before the rest
    assert [send.chunks for send in sends] == [
        [b"event: activity\nid: 1\ndata: 1\n\n", b"event: activity\nid: 2\ndata: 2\n\n"]
    ] * len(sends)


async def test_a_fan_out_that_raises_does_not_stop_later_events() -> None:
    """Were an offer to raise (a metrics file, a bug), that event is dropped for the rest
    of its streams, and the next events still reach everyone."""

    class Broken(Subscription):
        __slots__ = ()

        def offer_activity(self, *args: object) -> None:
            raise OSError("broken")

    hub = Hub()
    sends = [RecordingSend() for _ in range(3)]
    for send in sends:
        hub.subscribe().attached(send)  # type: ignore[arg-type]
    hub._subs.add(Broken(16))
    hub.publish(Event(ACTIVITY, "1"))
    hub._subs = {s for s in hub._subs if not isinstance(s, Broken)}
    hub.publish(Event(ACTIVITY, "2"))
    for _ in range(3):
        await asyncio.sleep(0)
    for send in sends:
        assert b"event: activity\nid: 2\ndata: 2\n\n" in send.chunks
