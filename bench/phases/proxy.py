"""`--proxy nginx`: at each N, one 2-worker instance reached directly, then two 1-worker
instances behind nginx; open, event and item-page phases, the same clients for both.
Results under "proxy"."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bench import nginx
from bench.phases.context import Contender

if TYPE_CHECKING:
    from bench.run import Bench


async def run_proxy(bench: Bench) -> None:
    o = bench.o
    binary = nginx.find_nginx()
    direct = Contender("ripple", "ripple", "uvicorn", "ripple", fan_in=True)
    proxied = Contender(
        "ripple-nginx",
        "ripple",
        "uvicorn",
        "ripple",
        proxy="nginx",
        fan_in=True,
        lock_timeout_ms=o.proxy_lock_timeout_ms,
    )
    await bench.start_writer(direct)
    proxied.writer, proxied.writer_visitors = direct.writer, direct.writer_visitors
    modes = [m for m in o.page_modes if m == "item"]
    section: dict[str, Any] = {
        "proxy": o.proxy,
        "nginx_version": nginx.nginx_version(binary),
        "nginx_worker_processes": nginx.NGINX_WORKER_PROCESSES,
        "cache_lock_timeout_ms": o.proxy_lock_timeout_ms,
        "instances": 2,
        "workers_per_instance": 1,
        "direct_workers": 2,
        "page_modes": modes,
        "sizes": {},
    }
    bench.results["proxy"] = section
    for n in o.sizes:
        for c in (direct, proxied):
            bench.say(f"--- {c.key}: {n} streams")
            entry = await bench.size(c, n, modes=modes, hammer=False)
            section["sizes"].setdefault(str(n), {})[c.key] = entry
