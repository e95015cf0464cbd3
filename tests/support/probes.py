"""Reading an instance from outside: metrics, health and presence, with bounded polling."""

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import httpx

T = TypeVar("T")


def metric_value(text: str, name: str, labels: str | None = None) -> float:
    """Sum of a metric's samples in Prometheus text (optionally only those with `labels`)."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        sample, _, value = line.rpartition(" ")
        metric = sample.split("{", 1)[0]
        if metric != name:
            continue
        if labels is not None and labels not in sample:
            continue
        total += float(value)
    return total


async def metric(base_url: str, name: str, labels: str | None = None) -> float:
    async with httpx.AsyncClient(base_url=base_url, timeout=5) as client:
        response = await client.get("/metrics")
    response.raise_for_status()
    return metric_value(response.text, name, labels)


async def health(base_url: str) -> tuple[int, dict[str, Any]]:
    async with httpx.AsyncClient(base_url=base_url, timeout=5) as client:
        response = await client.get("/healthz")
    return response.status_code, response.json()


async def online_ids(base_url: str) -> set[str]:
    async with httpx.AsyncClient(base_url=base_url, timeout=5) as client:
        response = await client.get("/fragments/presence", headers={"accept": "application/json"})
    response.raise_for_status()
    return {v["id"] for v in response.json()["visitors"]}


async def eventually(
    probe: Callable[[], Awaitable[T]],
    accept: Callable[[T], bool],
    timeout: float,
    interval: float = 0.2,
) -> T:
    """Poll `probe` until `accept` holds; the last value in the error otherwise."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    last_error: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            last = await probe()
            if accept(last):
                return last
        except (httpx.HTTPError, OSError) as exc:
            last_error = exc
        await asyncio.sleep(interval)
    raise TimeoutError(f"not within {timeout} s; last value {last!r}, last error {last_error!r}")
