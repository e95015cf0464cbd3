"""The floor under any fan-out on this machine: one `send()` of a frame to each of N sockets.

`python -m bench.sendcost 1000 10000 20000` opens N loopback TCP connections (both ends
in this process, reading ends drained between rounds), then times a loop that sends one
SSE-sized frame to every connection with `socket.send` (what a Python server's transport
does per frame at best). Reports microseconds per send, median and best of several
rounds. No server, no event loop: the kernel's cost plus a call. The hard open-file
limit is raised (as root) when 2N descriptors need it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import statistics
import time

FRAME = b"event: activity\nid: 123456\ndata: 123456\n\n"


def pairs(n: int) -> tuple[list[socket.socket], list[socket.socket], socket.socket]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4096)
    port = listener.getsockname()[1]
    senders, receivers = [], []
    for _ in range(n):
        client = socket.create_connection(("127.0.0.1", port))
        server, _ = listener.accept()
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        server.setblocking(False)
        senders.append(client)
        receivers.append(server)
    return senders, receivers, listener


def drain(receivers: list[socket.socket]) -> None:
    for sock in receivers:
        try:
            while sock.recv(65536):
                pass
        except BlockingIOError:
            pass


def measure(n: int, rounds: int = 7) -> dict[str, float]:
    senders, receivers, listener = pairs(n)
    try:
        loop_us = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            for sock in senders:
                sock.send(FRAME)
            loop_us.append((time.perf_counter() - t0) / n * 1e6)
            drain(receivers)
        return {
            "sockets": n,
            "us_per_send": round(statistics.median(loop_us), 2),
            "us_per_send_min": round(min(loop_us), 2),
            "ms_for_all": round(statistics.median(loop_us) * n / 1000, 2),
            "load_avg_1m": round(os.getloadavg()[0], 2),
        }
    finally:
        for sock in senders + receivers:
            sock.close()
        listener.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.sendcost", description=__doc__)
    parser.add_argument("sizes", nargs="*", type=int, default=[1000, 10000, 20000])
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 2 * max(args.sizes) + 256
    if hard != resource.RLIM_INFINITY and hard < need and os.geteuid() == 0:
        hard = need
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))
    for n in args.sizes:
        print(json.dumps(measure(n)), flush=True)


if __name__ == "__main__":
    main()
