"""The real app (``python -m app serve``) in a subprocess, configured only by environment."""

import os
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import psutil

from .ports import free_port
from .process import HttpReady, ManagedProcess, ProcessStartError

# Variables the app reads. They are never inherited from the environment pytest runs in, so a
# developer's shell cannot change what a test starts.
APP_VARIABLES = (
    "DATABASE_URL",
    "DATABASE_URL_UNPOOLED",
    "PORT",
    "WEB_CONCURRENCY",
    "APP_ENV",
    "SECRET_KEY",
    "RATE_LIMIT_PER_MINUTE",
    "MAX_STREAMS_PER_CLIENT",
    "MAX_STREAMS_PER_WORKER",
    "FORWARDED_ALLOW_IPS",
)

# Short timings so that presence, heartbeats and pings can be observed within a test.
FAST_KNOBS: dict[str, str] = {
    "RIPPLE_PRESENCE_EXPIRY_SECONDS": "6",
    "RIPPLE_PRESENCE_GRACE_SECONDS": "1",
    "RIPPLE_HEARTBEAT_SECONDS": "1",
    "RIPPLE_PING_SECONDS": "2",
}

DEFAULT_COMMAND = (sys.executable, "-m", "app", "serve")


ServerStartError = ProcessStartError


class AppServer(ManagedProcess):
    """One app instance: a process group (the server and its workers) on its own port, ready
    when ``/healthz`` answers 200 (every worker listening, the database answering).

    ``start()`` and ``stop()`` block; from an async test use ``await server.astart()`` or
    ``asyncio.to_thread`` so that streams already open keep being read meanwhile.
    """

    def __init__(
        self,
        database_url: str | None,
        env: Mapping[str, str] | None = None,
        *,
        port: int | None = None,
        workers: int = 2,
        log_dir: Path | None = None,
        startup_timeout: float = 30.0,
        command: Sequence[str] = DEFAULT_COMMAND,
    ) -> None:
        port = port or free_port()
        self.log_dir = log_dir or Path(tempfile.mkdtemp(prefix="ripple-server-"))
        super().__init__(
            "server",
            command,
            env=_app_env(port, database_url, workers, env or {}),
            log_path=self.log_dir / f"server-{port}.log",
            port=port,
            ready=HttpReady("/healthz"),
            startup_timeout=startup_timeout,
        )
        self.base_url = f"http://127.0.0.1:{self.port}"

    @property
    def command(self) -> list[str]:
        return self.argv

    def worker_pids(self) -> list[int]:
        """Pids of the processes serving requests: the main process's children (helpers such
        as multiprocessing's resource tracker excluded), or the main process when it serves
        alone."""
        try:
            children = psutil.Process(self.pid).children(recursive=False)
        except psutil.NoSuchProcess:
            return []
        pids = []
        for child in children:
            try:
                cmdline = " ".join(child.cmdline())
            except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
                continue
            if "resource_tracker" in cmdline or "semaphore_tracker" in cmdline:
                continue
            pids.append(child.pid)
        return pids or [self.pid]

    def __repr__(self) -> str:
        return f"AppServer({self.base_url}, running={self.running})"


def _app_env(
    port: int, database_url: str | None, workers: int, overrides: Mapping[str, str]
) -> dict[str, str]:
    """This process's environment less every variable the app reads, then the test's."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in APP_VARIABLES and not key.startswith("RIPPLE_")
    }
    env.update(
        {
            "APP_ENV": "development",
            "SECRET_KEY": "test",
            "RATE_LIMIT_PER_MINUTE": "0",
            "WEB_CONCURRENCY": str(workers),
            "PORT": str(port),
            "PYTHONUNBUFFERED": "1",
            **FAST_KNOBS,
        }
    )
    if database_url:
        env["DATABASE_URL"] = database_url
    env.update(overrides)
    return env
