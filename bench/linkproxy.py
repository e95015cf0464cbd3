"""The soak's link proxies (`support.tcpproxy.HoldingProxy`) in a process of their own.

Every database query of both instances, and a fifth of the streams, cross these links; in the
load generator's process they would share its interpreter lock with hundreds of streams and
slow the very paths being measured. Here they run on uvloop, driven over stdin/stdout:

    python -m bench.linkproxy TARGET_PORT...   prints "ready PORT..." (one per target)
    then lines "cut I" / "heal I" / "reset I", each answered "ok"; EOF or "stop" ends it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import subprocess
import sys
import threading

from support.paths import REPO_ROOT

ACTIONS = {"cut": "cut", "heal": "heal", "reset": "reset_all"}


def main(argv: list[str]) -> int:
    import uvloop
    from support.tcpproxy import HoldingProxy

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())  # the proxies' own loops
    proxies = [HoldingProxy("127.0.0.1", int(port)) for port in argv]
    try:
        for proxy in proxies:
            proxy.start()
        print("ready " + " ".join(str(p.port) for p in proxies), flush=True)
        for line in sys.stdin:
            words = line.split()
            if not words or words[0] == "stop":
                break
            action = ACTIONS.get(words[0])
            if action is None or len(words) != 2 or not words[1].isdigit():
                print(f"error: unknown command {line.strip()!r}", flush=True)
                continue
            getattr(proxies[int(words[1])], action)()
            print("ok", flush=True)
    finally:
        for proxy in proxies:
            with contextlib.suppress(Exception):
                proxy.stop()
    return 0


class LinkProcess:
    """The parent's handle: starts the process, sends commands, stops it by pid."""

    def __init__(self, target_ports: list[int], log_path: os.PathLike[str]) -> None:
        self._log = open(log_path, "ab")  # noqa: SIM115 (closed in stop)
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "bench.linkproxy", *map(str, target_ports)],
            cwd=REPO_ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            start_new_session=True,
            text=True,
        )
        self._lock = threading.Lock()
        self._lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        words = self._answer(30).split()
        if not words or words[0] != "ready":
            self.stop()
            raise RuntimeError(f"link proxies did not start: {words}")
        self.links = [Link(self, i, int(p)) for i, p in enumerate(words[1:])]

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            self._lines.put(line)

    def _answer(self, timeout: float) -> str:
        try:
            return self._lines.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"link proxies silent for {timeout} s") from None

    def command(self, line: str) -> None:
        with self._lock:
            assert self._proc.stdin is not None
            self._proc.stdin.write(line + "\n")
            self._proc.stdin.flush()
            answer = self._answer(15).strip()
        if answer != "ok":
            raise RuntimeError(f"link proxies answered {answer!r} to {line!r}")

    def stop(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            if self._proc.stdin is not None:
                self._proc.stdin.close()
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(5)
        self._log.close()


class Link:
    """One link: the port to connect to, and the faults it can carry."""

    def __init__(self, owner: LinkProcess, index: int, port: int) -> None:
        self.owner = owner
        self.index = index
        self.port = port

    def cut(self) -> None:
        self.owner.command(f"cut {self.index}")

    def heal(self) -> None:
        self.owner.command(f"heal {self.index}")

    def reset_all(self) -> None:
        self.owner.command(f"reset {self.index}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
