"""Through a proxy: where the streams landed, and how many of the pages' item fetches
reached an instance (the rest the proxy's cache absorbed)."""

from __future__ import annotations

import asyncio
from typing import Any

from support.probes import metric_value

from bench import procs
from bench.load import Recorder

ITEM_FRAGMENTS = ("ripple_fragment_requests_total", {"kind": "activity"})  # app.metrics


def _instances(server: procs.Target) -> list[procs.Server]:
    return server.instances if isinstance(server, procs.Balanced) else [server]


async def stream_split(server: procs.Target) -> list[dict[str, Any]]:
    """Each instance's own count of its open streams (its /metrics gauge)."""
    found = []
    for instance in _instances(server):
        metrics = await procs.scrape_metrics(instance.port)
        found.append(
            {
                "name": instance.name,
                "workers": instance.workers,
                "open_streams": int(metric_value(metrics, "ripple_open_streams")),
                "streams_opened": int(metric_value(metrics, "ripple_streams_opened_total")),
            }
        )
    return found


async def fragment_marks(server: procs.Target) -> dict[str, Any]:
    """Item fragments each instance has answered so far, and the proxy log's length."""
    counts = {}
    for instance in _instances(server):
        metrics = await procs.scrape_metrics(instance.port)
        counts[instance.name] = metric_value(metrics, *ITEM_FRAGMENTS)
    log = server.proxy.log_size() if isinstance(server, procs.Balanced) else 0
    return {"instances": counts, "log": log}


async def fan_in(
    server: procs.Target,
    before: dict[str, Any],
    recorder: Recorder,
    page: dict[str, Any],
) -> dict[str, Any]:
    """Item fetches the clients made against those that reached an instance."""
    await asyncio.sleep(0.5)  # nginx logs a request just after its answer went out
    after = await fragment_marks(server)
    reached = {
        name: round(after["instances"][name] - count) for name, count in before["instances"].items()
    }
    total = sum(reached.values())
    items = page.get("fragment", {}).get("items") or 0
    out: dict[str, Any] = {
        "client_requests": recorder.frag_sent,
        "client_failed": recorder.frag_failed,
        "items": items,
        "reached_instances": total,
        "per_instance": reached,
        "absorbed_x": round(recorder.frag_sent / total, 1) if total else None,
        "instance_requests_per_item": round(total / items, 2) if items else None,
    }
    if isinstance(server, procs.Balanced):
        logged = server.proxy.cache_statuses(before["log"])
        out["proxy_log"] = logged
        hits = logged["cache"].get("HIT", 0)
        out["proxy_hit_ratio"] = round(hits / max(1, sum(logged["cache"].values())), 4)
    return out
