"""The things the benchmark starts: a throwaway database and server processes.

Every process is started in its own session and remembered; `stop_all()` ends each one
by its pid (the launcher first, then any child it left), also after Ctrl-C or an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import psutil

from bench import net

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
SECRET_KEY = "ripple-benchmark-" + secrets.token_hex(16)

_started: list[Server] = []


def raise_open_file_limit() -> int:
    """Every stream is a socket on both ends; children inherit the raised limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = 1_048_576 if hard == resource.RLIM_INFINITY else hard
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((net.HOST, 0))
        return int(sock.getsockname()[1])


# -- the database -----------------------------------------------------------------------


def database_url(admin_url: str, name: str) -> str:
    parts = urlsplit(admin_url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, ""))


async def create_database(admin_url: str) -> tuple[str, str]:
    name = f"ripple_bench_{secrets.token_hex(6)}"
    conn = await asyncpg.connect(admin_url, timeout=10)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return name, database_url(admin_url, name)


def migrate(url: str) -> None:
    env = {**os.environ, "DATABASE_URL": url}
    env.pop("DATABASE_URL_UNPOOLED", None)
    done = subprocess.run(
        [sys.executable, "-m", "alembic", "upgrade", "head"],
        cwd=ROOT,
        env=env,
        timeout=120,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise RuntimeError(f"alembic upgrade head failed:\n{done.stdout}{done.stderr}")


async def drop_database(admin_url: str, name: str) -> None:
    conn = await asyncpg.connect(admin_url, timeout=10)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def server_facts(url: str) -> dict[str, str]:
    conn = await asyncpg.connect(url, timeout=10)
    try:
        return {
            "postgres": str(await conn.fetchval("SHOW server_version")),
            "max_connections": str(await conn.fetchval("SHOW max_connections")),
            "synchronous_commit": str(await conn.fetchval("SHOW synchronous_commit")),
        }
    finally:
        await conn.close()


# -- servers ----------------------------------------------------------------------------


@dataclass
class Server:
    """One instance: a launcher process and its workers."""

    name: str
    port: int
    workers: int
    argv: list[str]
    env: dict[str, str]
    health_path: str
    popen: subprocess.Popen[bytes] | None = None
    log: IO[bytes] | None = None
    temp_dirs: list[str] = field(default_factory=list)
    _procs: dict[int, psutil.Process] = field(default_factory=dict)

    def start(self, log_dir: Path) -> None:
        self.log = (log_dir / f"{self.name}-{self.port}.log").open("wb")
        self.popen = subprocess.Popen(
            self.argv,
            cwd=ROOT,
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        _started.append(self)

    async def wait_ready(self, timeout: float = 60.0) -> None:
        """Until the instance answers its health check with 200 (every worker listening)."""
        deadline = time.monotonic() + timeout
        raw = net.request_bytes("GET", self.health_path, self.port)
        last = "no answer"
        while time.monotonic() < deadline:
            if self.popen is not None and self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.popen.returncode}{self.tail()}")
            try:
                answer = await net.fetch(self.port, raw, timeout=5)
                if answer.status == 200:
                    self._remember_tree()
                    return
                last = f"status {answer.status}"
            except (OSError, TimeoutError) as exc:
                last = type(exc).__name__
            await asyncio.sleep(0.25)
        raise RuntimeError(f"{self.name} not ready after {timeout:.0f} s ({last}){self.tail()}")

    def tail(self, lines: int = 15) -> str:
        if self.log is None:
            return ""
        self.log.flush()
        text = Path(self.log.name).read_text(errors="replace").splitlines()[-lines:]
        return "\n" + "\n".join(text) if text else ""

    def _remember_tree(self) -> list[psutil.Process]:
        if self.popen is None:
            return []
        with contextlib.suppress(psutil.Error):
            root = psutil.Process(self.popen.pid)
            for proc in [root, *root.children(recursive=True)]:
                self._procs.setdefault(proc.pid, proc)
        return [p for p in self._procs.values() if p.is_running()]

    def sample(self) -> tuple[float, int]:
        """(CPU seconds so far, resident bytes) summed over the launcher and its workers."""
        cpu = 0.0
        rss = 0
        for proc in self._remember_tree():
            with contextlib.suppress(psutil.Error):
                times = proc.cpu_times()
                cpu += times.user + times.system
                rss += proc.memory_info().rss
        return cpu, rss

    def stop(self, grace: float = 8.0) -> None:
        """SIGTERM the launcher, wait, then SIGKILL whatever of its tree is left, by pid."""
        if self.popen is None:
            return
        procs = self._remember_tree()
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(grace)
        _, alive = psutil.wait_procs(procs, timeout=1.0)
        for proc in alive:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(5)
        if self.log is not None:
            self.log.close()
        for path in self.temp_dirs:
            shutil.rmtree(path, ignore_errors=True)
        with contextlib.suppress(ValueError):
            _started.remove(self)
        self.popen = None


def stop_all() -> None:
    for server in list(reversed(_started)):
        with contextlib.suppress(Exception):
            server.stop(grace=3.0)


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
        PYTHONUNBUFFERED="1",
    )
    return env


def ripple(name: str, url: str, workers: int, max_streams: int, server: str) -> Server:
    """Ripple as deployed: `python -m app serve`, or the same app under granian."""
    port = free_port()
    env = ripple_env(url, port, workers, max_streams)
    if server == "uvicorn":
        argv = [sys.executable, "-m", "app", "serve"]
        return Server(name, port, workers, argv, env, "/healthz")
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
    return Server(name, port, workers, argv, env, "/healthz", temp_dirs=[metrics_dir])


def baseline(name: str, url: str, workers: int) -> Server:
    """The naive app under uvicorn, the way its tutorials run it."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DATABASE_URL")}
    env.update(DATABASE_URL=url, SECRET_KEY=SECRET_KEY, PYTHONUNBUFFERED="1")
    argv = [
        sys.executable, "-m", "uvicorn", "bench.baseline_app:app", "--host", net.HOST,
        "--port", str(port), "--workers", str(workers), "--no-access-log",
        "--log-level", "warning", "--timeout-graceful-shutdown", "3",
    ]  # fmt: skip
    return Server(name, port, workers, argv, env, "/healthz")
