"""A profiled turn of the peer mode: a profiler attached over a phase's writes (py-spy for
Ripple; V8's sampler for the Node.js peer, which starts and writes it on SIGUSR2)."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import procs, profile
from bench.phases.context import Contender


def start_profile(
    c: Contender, server: procs.Target, mode: str | None, seconds: float, log_dir: Path
) -> Callable[[], dict[str, Any]]:
    """Start a profiler over the phase's write period; returns what collects it."""
    assert isinstance(server, procs.Server)
    name = f"{c.key}-{mode or 'event'}-{server.port}"
    if c.app == "ripple":
        spy = profile.PySpy(server.pid, seconds, log_dir / f"{name}.pyspy.txt")
        return spy.collect
    # Node: the peer starts V8's sampler on SIGUSR2 and writes the profile on the next.
    directory = Path(server.env["NODE_PEER_PROFILE_DIR"])
    for old in directory.glob("*.cpuprofile"):
        old.unlink()
    server.signal(signal.SIGUSR2)

    def collect() -> dict[str, Any]:
        server.signal(signal.SIGUSR2)
        time.sleep(1.5)
        return profile.v8_profiles(directory)

    return collect
