"""/healthz and /metrics describe the whole instance, whichever worker answers."""

import asyncio
from collections.abc import Callable

import httpx
from support.probes import metric_value
from support.server import AppServer
from support.sse import SSEClient

AppServerFactory = Callable[..., AppServer]


async def test_health_and_metrics_cover_every_worker(app_server: AppServerFactory) -> None:
    server = await asyncio.to_thread(app_server, workers=2)
    async with httpx.AsyncClient(base_url=server.base_url, timeout=5) as http:
        health = await http.get("/healthz")
        assert health.status_code == 200
        body = health.json()
        assert body["status"] == "ok"
        assert body["listener"] == "connected"
        assert body["workers"] == 2
        assert body["listeners_connected"] == 2

        streams = [await SSEClient.connect(server.base_url) for _ in range(7)]
        try:
            await asyncio.gather(*(s.wait_for(lambda e: e.event == "ping", 5) for s in streams))
            csrf = (await http.get("/")).cookies["csrftoken"]
            bumped = await http.post("/counter/increment", headers={"x-csrftoken": csrf})
            assert bumped.status_code == 200
            await asyncio.gather(*(s.wait_for(lambda e: e.event == "counter", 5) for s in streams))
            # New connections land on either worker; every answer counts both.
            totals = set()
            for _ in range(12):
                async with httpx.AsyncClient(base_url=server.base_url, timeout=5) as fresh:
                    text = (await fresh.get("/metrics")).text
                totals.add(metric_value(text, "ripple_open_streams"))
            assert totals == {7.0}
            for name in (
                "ripple_notification_queue_usage",
                "ripple_listener_connected",
                "ripple_listener_reconnects_total",
                "ripple_events_received_total",
                "ripple_frames_fanned_out_total",
                "ripple_notify_to_send_seconds_bucket",
            ):
                assert f"\n{name}" in text or f"# HELP {name}" in text, name
            assert metric_value(text, "ripple_listener_connected") == 1.0  # min over workers
            # Both workers' listeners received the event (one notification each).
            assert metric_value(text, "ripple_events_received_total", {"kind": "counter"}) >= 2
            assert metric_value(text, "ripple_frames_fanned_out_total", {"kind": "counter"}) >= 7
        finally:
            for s in streams:
                await s.aclose()
