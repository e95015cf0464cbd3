"""Reading an instance from outside: metrics, health and presence, with bounded polling."""

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import httpx
from prometheus_client.parser import text_string_to_metric_families

T = TypeVar("T")


def metric_value(text: str, name: str, labels: Mapping[str, str] | None = None) -> float:
    """Sum of a metric's samples in Prometheus text, optionally only those whose labels
    include `labels` (parsed by prometheus_client, so label order does not matter)."""
    wanted = dict(labels or {})
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and wanted.items() <= sample.labels.items()
    )


async def metrics_text(base_url: str, token: str | None = None, timeout: float = 5.0) -> str:
    """An instance's /metrics as Prometheus text (``token``: its METRICS_TOKEN, if set)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient(base_url=base_url, timeout=timeout) as client:
        response = await client.get("/metrics", headers=headers)
    response.raise_for_status()
    return response.text


async def metric(base_url: str, name: str, labels: Mapping[str, str] | None = None) -> float:
    return metric_value(await metrics_text(base_url), name, labels)


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
