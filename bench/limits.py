"""The machine limits a peer-mode run at tens of thousands of streams needs lifted: the
open-file limit and the ephemeral port range (put back afterwards)."""

from __future__ import annotations

import contextlib
import os
import resource
from pathlib import Path
from typing import Any

from support.ports import raise_open_file_limit

PORT_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
WIDE_PORTS = (10240, 65535)  # above the usual fixed ports (5432, 8000, 8080)


def raise_limits(streams: int) -> dict[str, Any]:
    """As root, lift the hard open-file limit and widen the ephemeral port range when the
    largest block needs it: the load process holds a socket per stream and per page, and
    every one of them takes a loopback port. Says what it changed (the port range is the
    machine's, and is put back by `restore_ports`)."""
    done: dict[str, Any] = {"root": os.geteuid() == 0}
    need = 2 * streams + 4096
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < need and done["root"]:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (need, need))
            done["hard_open_files_raised"] = f"{hard} -> {need}"
        except (ValueError, OSError) as exc:  # no CAP_SYS_RESOURCE: bench.shard instead
            done["hard_open_files_not_raised"] = f"{hard} (wanted {need}: {exc})"
    done["open_file_limit"] = raise_open_file_limit()
    with contextlib.suppress(OSError, ValueError):
        low, high = (int(x) for x in PORT_RANGE.read_text().split())
        done["port_range_before"] = f"{low} {high}"
        if high - low < streams + 16384 and done["root"]:
            PORT_RANGE.write_text(f"{WIDE_PORTS[0]} {WIDE_PORTS[1]}\n")
            done["port_range"] = f"{WIDE_PORTS[0]} {WIDE_PORTS[1]}"
    return done


def restore_ports(limits: dict[str, Any]) -> None:
    if "port_range" in limits:
        with contextlib.suppress(OSError):
            PORT_RANGE.write_text(limits["port_range_before"] + "\n")
