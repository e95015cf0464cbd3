"""More streams than one process may open: a second load process holding a share of them.

The open-file limit is per process (and this machine's hard limit cannot be raised), so
at 20,000 streams the benchmark holds half of them itself and half here. It opens its
streams, records every `activity` id with the time it arrived (`time.perf_counter` is
CLOCK_MONOTONIC on Linux, the same clock in both processes), and on `report` (with the
phase's writes and their send times on stdin) answers its delivery and writes its
latencies to a file. Driven by `bench.fanin` over stdin/stdout, one JSON line each way.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from array import array
from typing import Any

import numpy as np
from support.paths import REPO_ROOT

from bench import net
from bench.net import SseStream, StreamSink, now


class Holder(StreamSink):
    def __init__(self, count: int) -> None:
        self.ids = [array("q") for _ in range(count)]
        self.times = [array("d") for _ in range(count)]
        self.received = 0
        self.start_id = 1 << 62

    def on_activity(self, stream: SseStream, item_id: int, at: float) -> None:
        if item_id > self.start_id:
            self.ids[stream.index].append(item_id)
            self.times[stream.index].append(at)
            self.received += 1


def latencies(
    sent_at: dict[int, float], ids: list[array[int]], times: list[array[float]], live: list[bool]
) -> tuple[np.ndarray, int, int]:
    """Every (client, item) latency, the number received (each once) and the duplicates."""
    found, got, duplicates = [], 0, 0
    for client_ids, client_times, ok in zip(ids, times, live, strict=True):
        if not ok:
            continue
        seen = set()
        for item_id, at in zip(client_ids, client_times, strict=True):
            if item_id not in sent_at:
                continue
            if item_id in seen:
                duplicates += 1
                continue
            seen.add(item_id)
            found.append(at - sent_at[item_id])
        got += len(seen)
    return np.array(found, dtype=np.float64), got, duplicates


async def main() -> None:
    config = json.loads(sys.stdin.readline())
    holder = Holder(len(config["requests"]))
    requests = [r.encode("latin-1") for r in config["requests"]]
    streams, failed = await net.open_streams(
        config["port"], requests, holder, timeout=config.get("timeout", 120.0)
    )
    live = [s.status == 200 and not s.closed for s in streams]
    print(json.dumps({"open": sum(live), "failed": failed}), flush=True)
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            break
        command = json.loads(line)
        if command["do"] == "begin":
            holder.start_id = command["start_id"]
            for i in range(len(holder.ids)):
                holder.ids[i] = array("q")
                holder.times[i] = array("d")
            holder.received = 0
            print(json.dumps({"begun": holder.start_id}), flush=True)
        elif command["do"] == "report":
            sent_at = {int(k): v for k, v in command["sent_at"].items()}
            want = len(sent_at) * sum(live)
            end = now() + command["drain"]
            while holder.received < want and now() < end:
                await asyncio.sleep(0.1)
            lat, got, duplicates = latencies(sent_at, holder.ids, holder.times, live)
            np.save(command["path"], lat)
            still = sum(1 for s, ok in zip(streams, live, strict=True) if ok and not s.closed)
            print(
                json.dumps(
                    {
                        "received": got,
                        "expected": want,
                        "duplicates": duplicates,
                        "still_open": still,
                    }
                ),
                flush=True,
            )
        elif command["do"] == "stop":
            break
    for stream in streams:
        stream.close()


if __name__ == "__main__":
    import uvloop
    from support.ports import raise_open_file_limit

    raise_open_file_limit()
    uvloop.run(main())


class Shard:
    """The benchmark's side of a shard process: start it, and ask it one line at a time."""

    def __init__(self, popen: Any) -> None:
        self.popen = popen

    @classmethod
    def start(cls, port: int, requests: list[bytes], log_path: Any) -> Shard:
        import subprocess

        popen = subprocess.Popen(
            [sys.executable, "-m", "bench.shard"],
            cwd=REPO_ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log_path.open("wb"),
            start_new_session=True,
            text=True,
        )
        shard = cls(popen)
        shard._send(
            {
                "port": port,
                "requests": [r.decode("latin-1") for r in requests],
                "timeout": max(120.0, 2 * len(requests) / 40),
            }
        )
        return shard

    def _send(self, message: dict[str, Any]) -> None:
        assert self.popen.stdin is not None
        self.popen.stdin.write(json.dumps(message) + "\n")
        self.popen.stdin.flush()

    async def _answer(self, timeout: float) -> dict[str, Any]:
        assert self.popen.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(self.popen.stdout.readline), timeout)
        if not line:
            raise RuntimeError(f"the shard process ended (exit {self.popen.poll()})")
        return dict(json.loads(line))

    async def opened(self, timeout: float = 180.0) -> dict[str, Any]:
        return await self._answer(timeout)

    async def begin(self, start_id: int) -> None:
        self._send({"do": "begin", "start_id": start_id})
        await self._answer(30.0)

    async def report(self, sent_at: dict[int, float], path: str, drain: float) -> dict[str, Any]:
        self._send({"do": "report", "sent_at": sent_at, "path": path, "drain": drain})
        return await self._answer(drain + 60.0)

    def stop(self) -> None:
        """Ask it to close its streams and exit; kill it by pid if it does not."""
        import subprocess

        with contextlib.suppress(OSError, ValueError):
            self._send({"do": "stop"})
        try:
            self.popen.wait(10)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(5)
