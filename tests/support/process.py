"""A child process in a process group of its own: started with a log file, ready when a check
passes, stopped as a whole group within a bound, sampled for CPU time and memory.

mirakuru starts the child (``setsid``: its pid is its group's id) and polls the readiness
check (an HTTP status, or a TCP accept) until one deadline. Stopping is ours
(``processes.stop_group``): mirakuru's ``stop()`` waits for as long as its start timeout, sends
the leftovers only the stop signal, raises on an unexpected exit code and forgets the code;
callers here need a short bound, the whole group SIGKILLed and the exit code.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import psutil
from mirakuru import Executor, HTTPExecutor, SimpleExecutor, TCPExecutor
from mirakuru.exceptions import AlreadyRunning, ExecutorError, ProcessExitedWithError

from . import reaper
from .paths import REPO_ROOT
from .processes import signal_group, stop_group


@dataclass(frozen=True)
class HttpReady:
    """Ready when ``GET path`` answers ``status`` (an app's /healthz answers 200 only once
    every worker listens and the database answers)."""

    path: str = "/healthz"
    status: int = 200


@dataclass(frozen=True)
class TcpReady:
    """Ready when the port accepts a TCP connection."""


Readiness = HttpReady | TcpReady | None


class ProcessStartError(RuntimeError):
    """The child exited, or was not ready in time; the message ends with its log's last lines."""


class _ExactEnv:
    """The child gets exactly the environment given, nothing more.

    mirakuru merges its ``envvars`` into ``os.environ`` (so a variable left out on purpose
    would come back) and adds a marker that its exit-time sweep matches against the parent's
    pid as a substring (which could hit another run's children); the group is what we stop.
    """

    exact_env: dict[str, str]

    @property
    def envvars(self) -> dict[str, str]:
        return dict(self.exact_env)


class _Http(_ExactEnv, HTTPExecutor):
    pass


class _Tcp(_ExactEnv, TCPExecutor):
    pass


class _Plain(_ExactEnv, SimpleExecutor):
    pass


class ManagedProcess:
    """One command in its own process group, on ``port`` (0: none), logging to ``log_path``.

    ``start()`` blocks until ready (from async code: ``await astart()``); a failed start leaves
    nothing running. Whatever is still running at interpreter exit is killed (``reaper``).
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        log_path: Path,
        port: int = 0,
        ready: Readiness = HttpReady(),
        startup_timeout: float = 30.0,
        cwd: Path = REPO_ROOT,
        host: str = "127.0.0.1",
        popen_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = dict(env)  # may still be changed until start()
        self.log_path = log_path
        self.port = port
        self.host = host
        self.ready = ready
        self.startup_timeout = startup_timeout
        self.cwd = cwd
        self.popen_kwargs = dict(popen_kwargs or {})
        self._executor: SimpleExecutor | None = None
        self._popen: subprocess.Popen[str] | None = None
        self._returncode: int | None = None
        self._swept = False  # the group was stopped: never signal that pgid again
        self._tree: dict[int, psutil.Process] = {}

    # -- lifecycle -------------------------------------------------------------------------

    def _executor_for(self, log: Any) -> SimpleExecutor:
        common: dict[str, Any] = {
            "cwd": str(self.cwd),
            "timeout": self.startup_timeout,
            "sleep": 0.1,
            "stdin": subprocess.DEVNULL,
            "stdout": log,
            "stderr": subprocess.STDOUT,
            "popen_kwargs": self.popen_kwargs,
        }
        executor: SimpleExecutor
        if isinstance(self.ready, HttpReady):
            url = f"http://{self.host}:{self.port}{self.ready.path}"
            status = self.ready.status
            executor = _Http(self.argv, url, status, "GET", request_timeout=2.0, **common)
        elif isinstance(self.ready, TcpReady):
            executor = _Tcp(self.argv, self.host, self.port, **common)
        else:
            executor = _Plain(self.argv, **common)
        executor.exact_env = self.env
        return executor

    def start(self) -> Self:
        """Start the group and wait (bounded by ``startup_timeout``) until it is ready."""
        if self.running:
            raise RuntimeError(f"{self.name} is already running")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            log.write(f"--- start {self.argv} on port {self.port}\n".encode())
            log.flush()
            self._popen = None  # never signal a previous run's pid again
            self._swept = False
            self._returncode = None
            self._tree = {}
            self._executor = executor = self._executor_for(log)
            reaper.track(self, self.kill)
            try:
                # Executor.start() in its three steps, to keep hold of the child: on a failed
                # start mirakuru forgets it, and its group may still have members to stop.
                if isinstance(executor, Executor) and executor.pre_start_check():
                    raise AlreadyRunning(executor)
                SimpleExecutor.start(executor)
                self._popen = executor.process
                if isinstance(executor, Executor):
                    executor.wait_for(executor.check_subprocess)
            except ExecutorError as exc:
                self._failed_start(exc)
            except BaseException:  # interrupted while waiting: leave nothing running
                self.stop(timeout=5)
                raise
        self._remember_tree()
        return self

    def _failed_start(self, exc: ExecutorError) -> None:
        if isinstance(exc, ProcessExitedWithError):
            reason = f"{self.name} exited with code {exc.exit_code} before it was ready"
        elif isinstance(exc, AlreadyRunning):
            reason = f"something else already listens on port {self.port}"
        else:
            reason = f"{self.name} not ready within {self.startup_timeout} s ({self.ready})"
        self.stop(timeout=5)
        tail = self.log_tail()
        print(f"{reason}; last lines of {self.log_path}:\n{tail}", file=sys.stderr)
        raise ProcessStartError(f"{reason}\n--- log tail ---\n{tail}") from exc

    async def astart(self) -> Self:
        return await asyncio.to_thread(self.start)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM the group, wait up to ``timeout`` s, then SIGKILL the group; the exit code."""
        try:
            if self._popen is not None and not self._swept:
                self._returncode = stop_group(self._popen, timeout)
        finally:
            self._swept = True
            if self._executor is not None:
                self._executor.kill()  # nothing left to signal; closes its handles
            reaper.untrack(self)
        return self._returncode

    async def astop(self, timeout: float = 10.0) -> int | None:
        return await asyncio.to_thread(self.stop, timeout)

    def kill(self) -> int | None:
        """SIGKILL the whole group at once (a crash, not a shutdown)."""
        if self._popen is not None and not self._swept:
            signal_group(self._popen, signal.SIGKILL)
        return self.stop(timeout=0)

    def signal(self, sig: int, *, group: bool = False) -> None:
        """Send ``sig`` to the main process (as a supervisor would), or to the whole group."""
        popen = self._started()
        if group:
            signal_group(popen, sig)
        else:
            popen.send_signal(sig)

    def wait(self, timeout: float) -> int:
        """Wait for the main process to exit by itself (after ``signal``); return its code."""
        return self._started().wait(timeout=timeout)

    def _started(self) -> subprocess.Popen[str]:
        if self._popen is None:
            raise RuntimeError(f"{self.name} not started")
        return self._popen

    # -- inspection ------------------------------------------------------------------------

    @property
    def pid(self) -> int:
        return self._started().pid

    @property
    def running(self) -> bool:
        return self._popen is not None and not self._swept and self._popen.poll() is None

    @property
    def returncode(self) -> int | None:
        if self._popen is None:
            return None
        return self._returncode if self._swept else self._popen.poll()

    def _remember_tree(self) -> list[psutil.Process]:
        """The main process and its descendants, remembered so that a worker still counts
        once its parent has gone (psutil tells a reused pid apart)."""
        if self._popen is not None and not self._swept:
            with contextlib.suppress(psutil.Error):
                root = psutil.Process(self._popen.pid)
                for proc in [root, *root.children(recursive=True)]:
                    self._tree.setdefault(proc.pid, proc)
        return [p for p in self._tree.values() if p.is_running()]

    def sample(self) -> tuple[float, int]:
        """(CPU seconds so far, resident bytes) summed over the main process and its tree."""
        cpu = 0.0
        rss = 0
        for proc in self._remember_tree():
            with contextlib.suppress(psutil.Error):
                times = proc.cpu_times()
                cpu += times.user + times.system
                rss += proc.memory_info().rss
        return cpu, rss

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
        return f"{type(self).__name__}({self.name}, port={self.port}, running={self.running})"
