"""A slow client for real: a stream whose reader stops while a burst fills its socket, then
reads again. The stream's send waits, frames queue behind it in order, an overflow becomes a
`resync` (never a silent gap), and once the client has caught up new frames reach it at once
again."""

import asyncio
import time
from collections.abc import Callable

from support import database
from support.probes import eventually, metric
from support.server import AppServer
from support.sse_parse import FrameParser, SSEEvent, Utf8Decoder
from support.stalled import StalledStream
from support.visitors import Visitor

AppServerFactory = Callable[..., AppServer]
FIRST, COUNT = 900_001, 150_000  # ids far above any real item; ~7 MB of frames, more than
LAST = FIRST + COUNT - 1  # the kernel's socket buffers (4 MB at most) and the server's


class Reader:
    """Reads a stalled stream's socket from where it stopped, de-chunked and parsed."""

    def __init__(self, stalled: StalledStream) -> None:
        self.sock = stalled.sock
        self.http, self.text, self.frames = stalled.http, Utf8Decoder(), FrameParser()
        self.events: list[SSEEvent] = []

    async def until(self, done: Callable[[SSEEvent], bool], timeout: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + timeout
        while not (self.events and done(self.events[-1])):
            left = deadline - time.monotonic()
            assert left > 0, f"timed out; last events {self.events[-3:]}"
            # Small reads keep the incremental parsers' buffers small.
            data = await asyncio.wait_for(loop.sock_recv(self.sock, 4096), left)
            assert data, f"the server closed the stream; last events {self.events[-3:]}"
            for event in self.frames.feed(self.text.decode(self.http.feed(data))):
                self.events.append(event)
                if done(event):
                    return


def _ids(events: list[SSEEvent]) -> list[int]:
    return [int(e.id or 0) for e in events]


async def test_a_slow_client_gets_frames_in_order_a_resync_for_each_gap_then_live_frames(
    app_server: AppServerFactory, database_url: str
) -> None:
    knobs = {"RIPPLE_SEND_TIMEOUT_SECONDS": "60"}  # slow, not stuck: the watchdog stays out
    server = await asyncio.to_thread(app_server, knobs, workers=1)
    base = server.base_url
    received = {"kind": "activity"}
    before = await metric(base, "ripple_events_received_total", received)
    overflows = await metric(base, "ripple_resyncs_total", {"reason": "overflow"})
    async with await StalledStream.open(base) as stalled:
        assert stalled.status == 200
        await database.execute(
            database_url,
            f"SELECT pg_notify('ripple', 'activity:' || g) FROM generate_series({FIRST}, {LAST}) g",
        )
        # The whole burst reached the hub while the client read nothing.
        await eventually(
            lambda: metric(base, "ripple_events_received_total", received),
            lambda n: n >= before + COUNT,
            60,
        )
        # The send backed up: frames were buffered behind it and overflowed.
        assert await metric(base, "ripple_resyncs_total", {"reason": "overflow"}) >= overflows + 1
        reader = Reader(stalled)
        await reader.until(lambda e: e.id is not None and int(e.id) >= LAST, 60)
        live = [e for e in reader.events if e.event in ("activity", "resync")]
        assert int(live[-1].id or 0) == LAST
        resyncs = [e for e in live if e.event == "resync"]
        assert resyncs, "the buffer overflowed, but no resync was sent"
        assert all(e.data == "overflow" for e in resyncs)
        # Nothing is lost silently: ids only grow, and every gap is covered by a resync
        # naming an id at least as new as the frame after the gap's start.
        covered = FIRST - 1
        for event in live:
            n = int(event.id or 0)
            if event.event == "resync":
                assert n >= covered
                covered = n
            else:
                assert n == covered + 1, f"activity {n} after {covered} with no resync"
                covered = n
        # Frames went out in order before the send had to wait.
        assert sum(1 for e in live if e.event == "activity") > 1000
        # Caught up: a new item reaches this stream at once again.
        async with await Visitor.arrive(base) as visitor:
            item = str((await visitor.post("after the slow client caught up")).json()["id"])
            await reader.until(lambda e: e.event == "activity" and e.data == item, 10)
    log = server.log_text()
    assert "Exception in ASGI application" not in log, server.log_tail()
    assert "TransitionError" not in log, server.log_tail()
    assert server.running
