"""What a results file records about where it was measured: the machine and the commit."""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import psutil
from support.paths import REPO_ROOT


def app_revision() -> str:
    """The commit measured, with `-dirty` if the working tree differs from it.

    A run from an exported snapshot (no `.git`) names it in RIPPLE_BENCH_REVISION.
    """
    if os.environ.get("RIPPLE_BENCH_REVISION"):
        return os.environ["RIPPLE_BENCH_REVISION"]
    try:
        return subprocess.run(
            ["git", "describe", "--always", "--dirty", "--exclude", "*"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine() -> dict[str, Any]:
    freq = psutil.cpu_freq()
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpus": psutil.cpu_count(logical=True),
        "cpu_model": model,
        "cpu_mhz": round(freq.current) if freq else None,
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
    }
