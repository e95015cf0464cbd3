"""A reload is not a leave: presence waits out a grace period before announcing one.

Without the grace, every reload (or deploy) would make everyone's presence list flicker: a
leave event and a join event for each person. Real server, real streams.
"""

import asyncio
import time
from collections.abc import Callable

import pytest
from support.probes import eventually, online_ids
from support.server import AppServer
from support.sse import SSEClient, named
from support.visitors import Visitor

GRACE = 3.0
pytestmark = pytest.mark.slow  # waits out grace periods (see pyproject.toml)


async def test_a_reload_within_the_grace_announces_nothing_and_a_real_leave_is_announced(
    app_server: Callable[..., AppServer],
) -> None:
    server = await asyncio.to_thread(
        app_server, {"RIPPLE_PRESENCE_GRACE_SECONDS": str(GRACE)}, workers=2
    )
    base = server.base_url
    async with await Visitor.arrive(base) as watcher, await Visitor.arrive(base) as ann:
        ann_id = ann.cookies()["ripple_visitor"].split(".")[1]
        async with SSEClient.open(base, cookies=watcher.cookie_header()) as watching:
            first = await SSEClient.connect(base, cookies=ann.cookie_header())
            await watching.wait_for(named("presence", ann_id), timeout=10)
            await eventually(lambda: online_ids(base), lambda ids: ann_id in ids, 10)

            # A reload: the stream closes and a new one opens half a second later.
            await first.aclose()
            await asyncio.sleep(0.5)
            second = await SSEClient.connect(base, cookies=ann.cookie_header())
            flicker = await watching.collect(GRACE + 2, predicate=named("presence", ann_id))
            assert flicker == [], "a reload within the grace was announced as a leave and a join"
            assert ann_id in await online_ids(base)

            # A real leave: announced once the grace has passed, and not before.
            await second.aclose()
            left_at = time.monotonic()
            await watching.wait_for(named("presence", ann_id), timeout=GRACE + 10)
            waited = time.monotonic() - left_at
            assert waited >= GRACE * 0.8, f"the leave came {waited:.1f} s after the close"
            await eventually(lambda: online_ids(base), lambda ids: ann_id not in ids, 5)


async def test_a_reload_onto_another_instance_announces_nothing_and_a_real_leave_once(
    app_server: Callable[..., AppServer],
) -> None:
    """The new stream lands on another worker (here another instance, for certain): the
    old worker's leave after the grace and the new one's join change nobody's list, so
    neither is announced; the real leave later is announced by the last worker, once."""
    env = {"RIPPLE_PRESENCE_GRACE_SECONDS": "1"}
    a, b = await asyncio.gather(
        asyncio.to_thread(app_server, env, workers=1),
        asyncio.to_thread(app_server, env, workers=1),
    )
    async with await Visitor.arrive(a.base_url) as watcher, await Visitor.arrive(a.base_url) as ann:
        ann_id = ann.cookies()["ripple_visitor"].split(".")[1]
        async with SSEClient.open(a.base_url, cookies=watcher.cookie_header()) as watching:
            first = await SSEClient.connect(a.base_url, cookies=ann.cookie_header())
            await watching.wait_for(named("presence", ann_id), timeout=10)
            await first.aclose()
            await asyncio.sleep(0.3)
            second = await SSEClient.connect(b.base_url, cookies=ann.cookie_header())
            flicker = await watching.collect(4, predicate=named("presence", ann_id))
            assert flicker == [], "a reload onto another instance was announced"
            assert ann_id in await online_ids(a.base_url)
            await second.aclose()
            await watching.wait_for(named("presence", ann_id), timeout=10)
            await eventually(lambda: online_ids(a.base_url), lambda ids: ann_id not in ids, 5)
            again = await watching.collect(2, predicate=named("presence", ann_id))
            assert again == [], "the leave was announced more than once"
