"""The real app (``python -m app serve``) in a subprocess, configured only by environment."""

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

import httpx
import psutil

from . import reaper
from .paths import REPO_ROOT
from .ports import free_port
from .processes import signal_group, stop_group

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


class ServerStartError(RuntimeError):
    pass


class AppServer:
    """One app instance: a process group (the server and its workers) on its own port.

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
        self.port = port or free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.startup_timeout = startup_timeout
        self.command = list(command)
        self.log_dir = log_dir or Path(tempfile.mkdtemp(prefix="ripple-server-"))
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.log_dir / f"server-{self.port}.log"
        self.env = self._build_env(database_url, workers, env or {})
        self._proc: subprocess.Popen[bytes] | None = None
        self._swept = False  # the group was stopped: never signal that pgid again

    def _build_env(
        self, database_url: str | None, workers: int, overrides: Mapping[str, str]
    ) -> dict[str, str]:
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
                "PORT": str(self.port),
                "PYTHONUNBUFFERED": "1",
                **FAST_KNOBS,
            }
        )
        if database_url:
            env["DATABASE_URL"] = database_url
        env.update(overrides)
        return env

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> Self:
        """Start the process group and wait until ``/healthz`` answers 200 with status ok."""
        if self.running:
            raise RuntimeError("already running")
        with self.log_path.open("ab") as log:
            log.write(f"--- start {self.command} on port {self.port}\n".encode())
            log.flush()
            self._swept = False
            self._proc = subprocess.Popen(
                self.command,
                cwd=REPO_ROOT,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        reaper.track(self, self.kill)
        try:
            self.wait_ready(self.startup_timeout)
        except BaseException:
            self.stop(timeout=5)
            raise
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Poll ``/healthz`` until it answers ok; fail early if the process exits."""
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        with httpx.Client(timeout=2.0) as client:
            while time.monotonic() < deadline:
                if self._proc is None or self._proc.poll() is not None:
                    code = None if self._proc is None else self._proc.returncode
                    self._fail(f"server exited with code {code} before it was ready")
                try:
                    response = client.get(f"{self.base_url}/healthz")
                    if response.status_code == 200 and _status_ok(response):
                        return
                    last = f"{response.status_code} {response.text[:200]}"
                except httpx.HTTPError as exc:
                    last = repr(exc)
                time.sleep(0.1)
        self._fail(f"/healthz not ok within {timeout} s (last: {last})")

    def _fail(self, reason: str) -> None:
        tail = self.log_tail()
        print(f"{reason}; last lines of {self.log_path}:\n{tail}", file=sys.stderr)
        raise ServerStartError(f"{reason}\n--- log tail ---\n{tail}")

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM the group, wait up to ``timeout`` s, then SIGKILL it. Return the exit code."""
        if self._proc is None:
            return None
        if self._swept:
            return self._proc.returncode
        try:
            return stop_group(self._proc, timeout)
        finally:
            self._swept = True
            reaper.untrack(self)

    def kill(self) -> int | None:
        """SIGKILL the whole group at once (a crash, not a shutdown)."""
        if self._proc is None or self._swept:
            return self.returncode
        signal_group(self._proc, signal.SIGKILL)
        return self.stop(timeout=0)

    async def astart(self) -> Self:
        return await asyncio.to_thread(self.start)

    async def astop(self, timeout: float = 10.0) -> int | None:
        return await asyncio.to_thread(self.stop, timeout)

    def signal(self, sig: int, *, group: bool = False) -> None:
        """Send ``sig`` to the server's main process (as a supervisor would), or to the group."""
        if self._proc is None:
            raise RuntimeError("not started")
        if group:
            signal_group(self._proc, sig)
        else:
            self._proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        """Wait for the main process to exit by itself (after ``signal``); return its code."""
        if self._proc is None:
            raise RuntimeError("not started")
        return self._proc.wait(timeout=timeout)

    # -- inspection ------------------------------------------------------------------------

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RuntimeError("not started")
        return self._proc.pid

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self._proc is None else self._proc.poll()

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

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    # -- context manager -------------------------------------------------------------------

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"AppServer({self.base_url}, running={self.running})"


def _status_ok(response: httpx.Response) -> bool:
    try:
        body = response.json()
    except ValueError:
        return False
    return isinstance(body, dict) and body.get("status") == "ok"
