"""What a benchmark run does: stream counts, rates, durations, modes (the command line's
defaults; `--quick`, `--proxy` and `--peer` change some of them). Saved in the results file
under "options"."""

from __future__ import annotations

from dataclasses import dataclass, field

from support.database import DEFAULT_ADMIN_URL


@dataclass
class Options:
    sizes: list[int] = field(default_factory=lambda: [100, 1000, 3000, 5000])
    duration: float = 20.0  # seconds of writes per latency phase
    rate: float = 20.0  # activity posts per second in the event phase
    page_rate: float = 2.0  # activity posts per second in the page phases
    page_modes: list[str] = field(default_factory=lambda: ["item", "page"])
    page_max: int = 1000  # page phases only up to this many streams (fan-in saturates above)
    hammer_rate: float = 1000.0
    hammer_seconds: float = 5.0
    baseline_hammer_max: int = 100  # the baseline queues every increment for every stream
    server: str = "uvicorn"  # ripple's stream instance: uvicorn, granian or both
    baseline: bool = True
    visitors: int = 20  # visitors shared by the streams
    fetch_group: int = 1  # clients sharing one fetch pool (1: a connection per page)
    fetch_conns: int = 1  # keep-alive connections per fetch pool
    writer_conns: int = 16
    hammer_conns: int = 32
    throughput_seconds: float = 5.0
    throughput_conns: int = 32
    quiet_below: float = 40.0  # percent machine CPU busy (before a block starts)
    quiet_wait: float = 180.0  # seconds to wait for that at most
    admin_url: str = DEFAULT_ADMIN_URL
    quick: bool = False
    proxy: str | None = None  # "nginx": the proxy blocks instead of the usual ones
    proxy_lock_timeout_ms: int = 100  # nginx proxy_cache_lock_timeout: what a waiter waits
    peer: str | None = None  # "node": Ripple against the Node.js peer (bench/fanin.py)
    peer_rounds: int = 2  # turns each server gets at each N in that mode
    peer_servers: list[str] = field(default_factory=lambda: ["ripple", "node"])  # in turn
    profile: bool = False  # one more profiled turn each (py-spy, V8) in that mode

    def use_proxy(self, proxy: str) -> None:
        """The proxy mode's defaults (command-line options still override them)."""
        self.proxy = proxy
        if not self.quick:
            self.sizes = [100, 1000, 3000]
            self.page_max = 3000  # the fan-in the proxy absorbs is the point of the mode

    def use_peer(self, peer: str) -> None:
        """The peer mode's defaults (command-line options still override them)."""
        self.peer = peer
        self.page_modes = ["page"]
        self.rate = 5.0
        if not self.quick:
            self.sizes = [1000, 10000, 20000]

    @classmethod
    def quick_defaults(cls) -> Options:
        return cls(
            sizes=[50, 200],
            duration=4.0,
            hammer_seconds=2.0,
            hammer_rate=500.0,
            throughput_seconds=2.0,
            quiet_wait=0.0,
            quick=True,
        )
