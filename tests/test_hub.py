"""The in-process fan-out: bounded, coalescing, never blocking, frames encoded once."""

import asyncio

from app.realtime import ACTIVITY, COUNTER, PRESENCE, Event, Hub


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


async def test_wait_wakes_on_publish_and_on_close() -> None:
    hub = Hub()
    sub = hub.subscribe()
    waiter = asyncio.create_task(sub.wait())
    await asyncio.sleep(0)
    assert not waiter.done()
    hub.publish(Event(ACTIVITY, "1"))
    await asyncio.wait_for(waiter, 1)
    sub.take()
    waiter = asyncio.create_task(sub.wait())
    await asyncio.sleep(0)
    hub.close_all()
    await asyncio.wait_for(waiter, 1)
    assert sub.closed
