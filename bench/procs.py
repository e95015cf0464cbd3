"""The servers the benchmark starts: Ripple (uvicorn or granian), the naive baseline, and
Ripple instances behind nginx (`bench.nginx`).

Each is a `support.process.ManagedProcess` (its own process group, ready on /healthz,
stopped as a group, sampled for CPU and memory); whatever is still running when a run ends
or fails is stopped by `stop_all()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from support import reaper
from support.ports import free_port
from support.probes import metrics_text
from support.process import HttpReady, ManagedProcess, Readiness

from bench import net

if TYPE_CHECKING:
    from bench.nginx import Nginx

SECRET_KEY = "ripple-benchmark-" + secrets.token_hex(16)
METRICS_TOKEN = "ripple-benchmark-metrics-" + secrets.token_hex(8)
STARTUP_TIMEOUT = 60.0
HEALTHZ = HttpReady("/healthz")  # 200 once every worker listens and the database answers


class Server(ManagedProcess):
    """One instance: a launcher process and its `workers`, logging into `log_dir`."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        env: dict[str, str],
        *,
        log_dir: Path,
        port: int,
        workers: int,
        ready: Readiness = HEALTHZ,
        temp_dirs: list[str] | None = None,
    ) -> None:
        super().__init__(
            name,
            argv,
            env=env,
            log_path=log_dir / f"{name}-{port}.log",
            port=port,
            host=net.HOST,
            ready=ready,
            startup_timeout=STARTUP_TIMEOUT,
        )
        self.workers = workers
        self.temp_dirs = temp_dirs or []

    def stop(self, timeout: float = 8.0) -> int | None:
        try:
            return super().stop(timeout)
        finally:
            self.remove_temp_dirs()

    def remove_temp_dirs(self) -> None:
        for path in self.temp_dirs:
            shutil.rmtree(path, ignore_errors=True)


def stop_all() -> None:
    """Stop every process still running (after an error or Ctrl-C), each by its group."""
    reaper.run_all()


def ripple_env(url: str, port: int, workers: int, max_streams: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "RIPPLE_"))}
    env.update(
        DATABASE_URL=url,
        PORT=str(port),
        WEB_CONCURRENCY=str(workers),
        RATE_LIMIT_PER_MINUTE="0",
        MAX_STREAMS_PER_CLIENT="0",
        MAX_STREAMS_PER_WORKER=str(max(10_000, max_streams)),
        APP_ENV="production",
        SECRET_KEY=SECRET_KEY,
        METRICS_TOKEN=METRICS_TOKEN,
        PYTHONUNBUFFERED="1",
    )
    return env


def ripple(
    name: str, url: str, workers: int, max_streams: int, server: str, log_dir: Path
) -> Server:
    """Ripple as deployed: `python -m app serve`, or the same app under granian."""
    port = free_port(net.HOST)
    env = ripple_env(url, port, workers, max_streams)
    if server == "uvicorn":
        argv = [sys.executable, "-m", "app", "serve"]
        return Server(name, argv, env, log_dir=log_dir, port=port, workers=workers)
    metrics_dir = tempfile.mkdtemp(prefix="ripple-bench-metrics-")
    env["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    env["RIPPLE_INSTANCE_ID"] = f"bench-granian-{secrets.token_hex(4)}"
    backlog = 4096
    argv = [
        sys.executable, "-m", "granian", "--interface", "asgi", "--workers", str(workers),
        "--host", net.HOST, "--port", str(port), "--loop", "uvloop", "--http", "1",
        "--no-access-log", "--log-level", "warning", "--backlog", str(backlog),
        # Granian admits backlog/workers requests per worker by default; a stream is a
        # request for its whole life, so lift it above the streams we will open.
        "--backpressure", str(max(10_000, max_streams)),
        "app.asgi:app",
    ]  # fmt: skip
    return Server(
        name, argv, env, log_dir=log_dir, port=port, workers=workers, temp_dirs=[metrics_dir]
    )


def baseline(name: str, url: str, workers: int, log_dir: Path) -> Server:
    """The naive app under uvicorn, the way its tutorials run it."""
    port = free_port(net.HOST)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DATABASE_URL")}
    env.update(DATABASE_URL=url, SECRET_KEY=SECRET_KEY, PYTHONUNBUFFERED="1")
    argv = [
        sys.executable, "-m", "uvicorn", "bench.baseline_app:app", "--host", net.HOST,
        "--port", str(port), "--workers", str(workers), "--no-access-log",
        "--log-level", "warning", "--timeout-graceful-shutdown", "3",
    ]  # fmt: skip
    return Server(name, argv, env, log_dir=log_dir, port=port, workers=workers)


class Balanced:
    """Several Ripple instances behind one proxy, used where one instance would be.

    `port` is the proxy's; `sample()` covers the instances only (so CPU per frame and
    memory per stream stay Ripple's), `parts()` names every process group for the CPU
    breakdown, the proxy included.
    """

    def __init__(self, name: str, instances: list[Server], proxy: Nginx) -> None:
        self.name = name
        self.instances = instances
        self.proxy = proxy

    @property
    def port(self) -> int:
        return self.proxy.port

    @property
    def workers(self) -> int:
        return sum(s.workers for s in self.instances)

    def parts(self) -> list[Server]:
        return [*self.instances, self.proxy]

    async def astart(self) -> Balanced:
        await asyncio.gather(*(server.astart() for server in self.parts()))
        return self

    def sample(self) -> tuple[float, int]:
        cpu, rss = 0.0, 0
        for server in self.instances:
            c, r = server.sample()
            cpu += c
            rss += r
        return cpu, rss

    def stop(self, timeout: float = 8.0) -> None:
        for server in [self.proxy, *self.instances]:
            with contextlib.suppress(Exception):
                server.stop(timeout)


Target = Server | Balanced  # what the clients connect to


def ripple_behind_nginx(
    name: str,
    url: str,
    max_streams: int,
    log_dir: Path,
    instances: int = 2,
    workers: int = 1,
    lock_timeout_ms: int = 100,
) -> Balanced:
    """`instances` Ripple instances of `workers` each, and nginx in front of them."""
    from bench.nginx import nginx

    servers = [
        ripple(f"{name}-{chr(ord('a') + i)}", url, workers, max_streams, "uvicorn", log_dir)
        for i in range(instances)
    ]
    proxy = nginx(f"{name}-proxy", [s.port for s in servers], max_streams, lock_timeout_ms, log_dir)
    return Balanced(name, servers, proxy)


async def scrape_metrics(port: int, timeout: float = 10.0) -> str:
    """An instance's /metrics (Prometheus text; read it with `support.probes.metric_value`)."""
    return await metrics_text(f"http://{net.HOST}:{port}", METRICS_TOKEN, timeout)
