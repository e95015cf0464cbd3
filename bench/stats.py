"""Turning what the clients recorded into the numbers the report shows."""

from __future__ import annotations

from array import array
from typing import Any

import numpy as np

PERCENTILES = (50, 90, 99)


def summary_ms(values: np.ndarray) -> dict[str, float | int | None]:
    """p50/p90/p99/max in milliseconds (None when nothing was measured)."""
    if values.size == 0:
        return {"n": 0, "p50": None, "p90": None, "p99": None, "max": None}
    found = np.percentile(values, PERCENTILES) * 1000.0
    return {
        "n": int(values.size),
        **{f"p{p}": round(float(v), 2) for p, v in zip(PERCENTILES, found, strict=True)},
        "max": round(float(values.max()) * 1000.0, 2),
    }


def delivery(
    sent_at: dict[int, float],
    ids: list[array[int]],
    times: list[array[float]],
    live: list[bool],
) -> dict[str, Any]:
    """Latency per (client, item), the last client per item, and the delivery ratio.

    `live` marks the clients whose stream opened; an item missing at any of them, or
    received twice, makes the ratio less than 1 (duplicates are reported too).
    """
    wanted = np.array(sorted(sent_at), dtype=np.int64)
    if wanted.size == 0:
        return {"items": 0, "clients": sum(live), "ratio": None}
    base = int(wanted.min())
    span = int(wanted.max()) - base + 1
    sent = np.full(span, np.nan)
    sent[wanted - base] = [sent_at[int(i)] for i in wanted]
    last = np.full(span, -np.inf)
    latencies = []
    got = 0
    duplicates = 0
    clients = 0
    for client_ids, client_times, ok in zip(ids, times, live, strict=True):
        if not ok:
            continue
        clients += 1
        if not client_ids:
            continue
        idx = np.frombuffer(client_ids, dtype=np.int64) - base
        at = np.frombuffer(client_times, dtype=np.float64)
        keep = (idx >= 0) & (idx < span)
        idx, at = idx[keep], at[keep]
        keep = ~np.isnan(sent[idx])
        idx, at = idx[keep], at[keep]
        unique = np.unique(idx)
        duplicates += int(idx.size - unique.size)
        got += int(unique.size)
        lat = at - sent[idx]
        latencies.append(lat)
        np.maximum.at(last, idx, lat)
    lat_all = np.concatenate(latencies) if latencies else np.array([])
    last = last[~np.isnan(sent)]
    last = last[np.isfinite(last)]
    expected = clients * int(wanted.size)
    return {
        "items": int(wanted.size),
        "clients": clients,
        "received": got,
        "expected": expected,
        "duplicates": duplicates,
        "ratio": round(got / expected, 6) if expected else None,
        "latency_ms": summary_ms(lat_all),
        "last_client_ms": summary_ms(last),
    }


def max_per_second(times: array[float]) -> int:
    """The most events inside any window [t, t + 1 s)."""
    if not times:
        return 0
    at = np.sort(np.frombuffer(times, dtype=np.float64))
    ends = np.searchsorted(at, at + 1.0, side="left")
    return int((ends - np.arange(at.size)).max())


def gaps(per_client: list[array[float]], clients: list[int]) -> dict[str, float | int | None]:
    """Time between consecutive events at one client, over all clients (ms)."""
    found = [np.diff(np.frombuffer(per_client[i], dtype=np.float64)) for i in clients]
    found = [g for g in found if g.size]
    if not found:
        return {"min": None, "p1": None, "under_90": 0}
    every = np.concatenate(found) * 1000.0
    return {
        "min": round(float(every.min()), 1),
        "p1": round(float(np.percentile(every, 1)), 1),
        "under_90": int((every < 90.0).sum()),
    }
