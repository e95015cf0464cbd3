"""A reconnect storm: every client of a restarted instance comes back at once. Presence
events are coalesced per worker, so N clients cost O(N) fragment fetches, not O(N^2)."""

import asyncio
import signal
import time
from collections import Counter
from collections.abc import Callable

import httpx
import pytest
from support.probes import metric
from support.server import AppServer
from support.sse import SSEClient
from support.visitors import Visitor

pytestmark = pytest.mark.slow  # a long fault or load test (see pyproject.toml)

AppServerFactory = Callable[..., AppServer]
CLIENTS = 300
WINDOW = 6.0  # seconds of storm observed


async def test_300_streams_reconnecting_at_once_cost_linear_work(
    app_server: AppServerFactory,
) -> None:
    env = {"MAX_STREAMS_PER_CLIENT": "0"}
    server = await asyncio.to_thread(app_server, env, workers=2)
    gate = asyncio.Semaphore(20)

    async def arrive() -> str:
        async with gate, await Visitor.arrive(server.base_url) as visitor:
            return visitor.cookie_header()

    cookies = await asyncio.gather(*(arrive() for _ in range(CLIENTS)))
    first = await asyncio.gather(*(SSEClient.connect(server.base_url, cookies=c) for c in cookies))
    await asyncio.gather(*(s.wait_for(lambda ev: ev.event == "ping", 20) for s in first))

    # Restart the instance on the same port; the streams end and everyone comes back.
    server.signal(signal.SIGTERM)
    await asyncio.to_thread(server.wait, 15)
    for s in first:
        await s.wait_closed(timeout=5)
    server = await asyncio.to_thread(app_server, env, workers=2, port=server.port)
    served_before = await metric(
        server.base_url, "ripple_fragment_requests_total", {"kind": "presence"}
    )

    fetches = Counter[int]()
    limits = httpx.Limits(max_connections=20)
    async with httpx.AsyncClient(base_url=server.base_url, limits=limits, timeout=30) as http:

        async def behave_like_a_page(n: int, stream: SSEClient) -> None:
            """On every presence event, re-read the list, as the page does."""
            deadline = time.monotonic() + WINDOW
            while (left := deadline - time.monotonic()) > 0:
                try:
                    event = await stream.next_event(timeout=left)
                except TimeoutError:
                    return
                if event.event == "presence":
                    fetches[n] += 1
                    response = await http.get("/fragments/presence")
                    assert response.status_code == 200

        storm = await asyncio.gather(
            *(SSEClient.connect(server.base_url, cookies=c, timeout=30) for c in cookies)
        )
        try:
            assert all(s.status == 200 for s in storm)
            await asyncio.gather(*(behave_like_a_page(n, s) for n, s in enumerate(storm)))
        finally:
            await asyncio.gather(*(s.aclose() for s in storm))

    print(
        f"presence fetches per stream: max {max(fetches.values())}, total {sum(fetches.values())}"
    )
    served = (
        await metric(server.base_url, "ripple_fragment_requests_total", {"kind": "presence"})
        - served_before
    )
    per_stream = [fetches[n] for n in range(CLIENTS)]
    # 300 joins would be 300 events per stream (90,000 fetches) without coalescing; the
    # per-worker throttle allows at most ~4 presence frames per second per stream.
    assert max(per_stream) <= WINDOW * 4 + 2, per_stream
    assert sum(per_stream) == served
    assert served <= CLIENTS * (WINDOW * 4 + 2)
    assert served < CLIENTS * CLIENTS / 10
