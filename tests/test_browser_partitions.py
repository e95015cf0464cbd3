"""Real Chromium cut off from its instance by a holding TCP proxy: the stream goes silent
without closing (no error, no end), as behind a broken network. The page must notice within
its silence window, reconnect once the link is back, and show the current state."""

import asyncio
import time

import pytest
from support.browser import ServerFactory, Web
from support.tcpproxy import HoldingProxy
from support.visitors import Visitor

pytest_plugins = ("support.browser_plugin",)
pytestmark = [pytest.mark.browser, pytest.mark.asyncio(loop_scope="module")]

SILENCE_SECONDS = 6.0  # RIPPLE_STREAM_SILENCE_SECONDS for this test (35 in production)
CUT_SECONDS = 15.0  # well past the silence window: the page's reconnects go nowhere meanwhile


@pytest.mark.slow
async def test_a_page_cut_off_from_its_instance_notices_reconnects_and_catches_up(
    web: Web, app_server: ServerFactory
) -> None:
    web.allow_network_errors()
    server = await asyncio.to_thread(
        app_server, {"RIPPLE_STREAM_SILENCE_SECONDS": str(SILENCE_SECONDS)}, workers=1
    )
    with HoldingProxy("127.0.0.1", server.port) as link:
        tab = await web.open(f"http://127.0.0.1:{link.port}", "a")
        silence = await tab.page.evaluate(
            "document.querySelector('meta[name=\"ripple-silence-ms\"]').content"
        )
        assert silence == str(round(SILENCE_SECONDS * 1000))
        async with await Visitor.arrive(server.base_url) as writer:  # on the direct link
            await asyncio.to_thread(link.cut)
            cut_at = time.monotonic()
            written = [(await writer.post(f"during the cut {n}")).json()["id"] for n in range(3)]
            value = (await writer.increment()).json()["value"]

            await tab.wait_state("reconnecting", timeout=SILENCE_SECONDS + 10)
            noticed = time.monotonic() - cut_at
            assert link.connection_count > 0  # nothing was closed: the page saw only silence
            assert not set(written) & set(await tab.feed_ids())

            await asyncio.sleep(max(0.0, CUT_SECONDS - (time.monotonic() - cut_at)))
            await tab.wait_state("reconnecting", timeout=1)  # still cut off: not live
            await asyncio.to_thread(link.heal)
            healed_at = time.monotonic()

            await tab.wait_live(timeout=30)
            live_again = time.monotonic() - healed_at
            await tab.wait_items(written, timeout=15)
            await tab.wait_counter(value, timeout=15)
            current = time.monotonic() - healed_at

            after = (await writer.post("after the heal")).json()["id"]
            await tab.wait_items([after], timeout=10)

        print(
            "\npartition of the browser link, seconds:",
            {
                "silence window": SILENCE_SECONDS,
                "noticed after cut": round(noticed, 2),
                "live after heal": round(live_again, 2),
                "current state shown after heal": round(current, 2),
            },
        )
        # Silence made the page notice, not an error (a closed stream is noticed at once); the
        # last ping may have come up to one ping interval (2 s here) before the cut.
        assert noticed > SILENCE_SECONDS / 2
        await web.finish(tab)
