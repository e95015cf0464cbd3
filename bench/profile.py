"""Where a server's CPU goes during a phase: py-spy for Ripple, V8's --cpu-prof for Node.

Both are summarised the same way: the share of samples whose innermost frame (self time)
falls in each package or file, and the busiest functions, so a figure can say where its
time went. py-spy samples from outside the process (`--nonblocking`: it never pauses
the workers; `--native` would, and then inflates the latencies it is meant to explain,
and counts threads blocked in a system call as busy); it comes from the `bench` extra.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def py_spy() -> str | None:
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


def _area(path: str) -> str:
    """A file's package: `app.realtime`, `uvicorn`, `asyncio`, ... (self time is grouped so)."""
    if not path:
        return "(native)"
    parts = Path(path).parts
    for anchor in ("site-packages", "dist-packages"):
        if anchor in parts:
            return parts[parts.index(anchor) + 1].removesuffix(".py")
    if "app" in parts:
        rest = parts[parts.index("app") :]
        return ".".join(rest[:2]).removesuffix(".py")
    if "node_modules" in parts:
        return parts[parts.index("node_modules") + 1]
    if re.search(r"python3\.\d+", path):
        return Path(path).stem if "asyncio" not in parts else "asyncio"
    return Path(path).name or path


UVLOOP = "uvloop (C: socket I/O, callbacks)"


def _area_of(func: str, path: str) -> str:
    """py-spy without --native (which would pause the workers) sees uvloop's C loop as
    time in `asyncio.Runner.run`, the last Python frame: socket reads and writes, epoll,
    and the loop's own callback handling."""
    if func == "Runner.run" and path.endswith("runners.py"):
        return UVLOOP
    return _area(path)


def summarise(self_counts: Counter[tuple[str, str]], top: int = 12) -> dict[str, Any]:
    total = sum(self_counts.values())
    if not total:
        return {"samples": 0}
    areas: Counter[str] = Counter()
    for (func, path), count in self_counts.items():
        areas[_area_of(func, path)] += count
    return {
        "samples": total,
        "self_by_area_pct": {a: round(100 * c / total, 1) for a, c in areas.most_common(top)},
        "self_by_function_pct": {
            f"{func} ({_area_of(func, path)})": round(100 * count / total, 1)
            for (func, path), count in self_counts.most_common(top)
        },
    }


class PySpy:
    """`py-spy record` of a launcher and its workers for `seconds`, in the background."""

    def __init__(self, pid: int, seconds: float, out: Path) -> None:
        self.out = out
        self.popen: subprocess.Popen[bytes] | None = None
        binary = py_spy()
        if binary is None:
            return
        argv = [
            binary, "record", "--pid", str(pid), "--subprocesses", "--nonblocking",
            "--full-filenames", "--rate", "100",
            "--duration", str(max(1, round(seconds))), "--format", "raw", "-o", str(out),
        ]  # fmt: skip
        self.popen = subprocess.Popen(
            argv,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    def collect(self, timeout: float = 30.0) -> dict[str, Any]:
        if self.popen is None:
            return {"error": "py-spy not installed (pip install -e '.[bench]')"}
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signal.SIGINT)
            self.popen.wait(10)
        if not self.out.exists():
            return {"error": f"py-spy wrote nothing (exit {self.popen.returncode})"}
        counts: Counter[tuple[str, str]] = Counter()
        for line in self.out.read_text(errors="replace").splitlines():
            stack, _, n = line.rpartition(" ")
            if not n.isdigit() or not stack:
                continue
            leaf = stack.rsplit(";", 1)[-1].strip()
            if leaf.startswith("process "):  # only the process's own root frame: no stack
                continue
            match = FRAME.match(leaf)
            key = (match["func"], match["file"]) if match else (leaf, "")
            counts[key] += int(n)
        return summarise(counts)


def v8_profiles(directory: Path) -> dict[str, Any]:
    """Self time of every `.cpuprofile` V8 wrote into `directory` (one per Node process)."""
    counts: Counter[tuple[str, str]] = Counter()
    for path in directory.glob("*.cpuprofile"):
        with contextlib.suppress(ValueError, OSError):
            profile = json.loads(path.read_text())
            hits = Counter(profile.get("samples", []))
            for node in profile.get("nodes", []):
                frame = node["callFrame"]
                name = frame.get("functionName") or "(anonymous)"
                if name == "(idle)" and not frame.get("url"):
                    continue
                counts[(name, frame.get("url", "").removeprefix("file://"))] += hits.get(
                    node["id"], 0
                )
    return summarise(counts) if counts else {"error": "no .cpuprofile written"}
