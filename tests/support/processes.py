"""Stopping a child started with ``start_new_session=True`` together with everything it spawned."""

import contextlib
import os
import signal
import subprocess
import time
from typing import Any


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
    """Wait (bounded) until no process is left in the group; SIGKILL lands asynchronously.

    A member that has died but not yet been reaped by its new parent still counts, so this
    gives up after ``timeout`` rather than fail.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        time.sleep(0.02)
    return False
