"""Stopping a child started with ``start_new_session=True`` together with everything it spawned."""

import contextlib
import os
import signal
import subprocess
import time
from typing import Any

import psutil


def signal_group(proc: subprocess.Popen[Any], sig: int) -> None:
    """Send ``sig`` to the child's whole process group (its pgid is its pid)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def stop_group(proc: subprocess.Popen[Any], timeout: float = 10.0) -> int:
    """SIGTERM the group, wait up to ``timeout`` seconds, then SIGKILL it; return the exit code.

    The group is SIGKILLed even when the leader exits in time, so that a worker that ignored
    the leader's shutdown cannot outlive it.
    """
    if proc.poll() is None:
        signal_group(proc, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=timeout)
    signal_group(proc, signal.SIGKILL)
    try:
        code = proc.wait(timeout=10)
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"process {proc.pid} survived SIGKILL") from exc
    wait_group_gone(proc.pid, timeout=3.0)
    return code


def wait_group_gone(pgid: int, timeout: float) -> bool:
    """Wait (bounded) until no live process is left in the group; SIGKILL lands
    asynchronously. Members that have died but wait to be reaped by their new parent
    (zombies: nothing left to stop) do not count, since reaping may take a while here."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        if not _live_members(pgid):
            return True
        time.sleep(0.02)
    return False


def _live_members(pgid: int) -> bool:
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                return True
        except (OSError, psutil.Error):
            continue
    return False
