"""The Node.js peer (`bench/node_peer/`): installing it with `npm ci` and starting it.

It is the common Node.js design of the same endpoints (node:http + pg under node:cluster,
one LISTEN per worker, a Set of responses), run against the same migrated database.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from support.paths import REPO_ROOT
from support.ports import free_port

from bench import net, procs

PEER_DIR = REPO_ROOT / "bench" / "node_peer"


class NodeMissing(RuntimeError):
    """node or npm is not installed, or the peer's dependencies could not be installed."""


def find(binary: str) -> str:
    found = shutil.which(binary)
    if found is None:
        raise NodeMissing(
            f"--peer node needs `{binary}` (Node.js 20 or newer with npm), which is not on PATH"
        )
    return found


def version() -> str:
    done = subprocess.run([find("node"), "--version"], capture_output=True, text=True, timeout=10)
    return done.stdout.strip()


def install() -> str:
    """`npm ci` into bench/node_peer/node_modules (git-ignored), from the committed lock file.

    Skipped when node_modules already matches the lock file (npm writes a copy of it
    there); returns the installed `pg` version.
    """
    npm = find("npm")
    find("node")
    lock = PEER_DIR / "package-lock.json"
    installed = PEER_DIR / "node_modules" / ".package-lock.json"
    if not installed.exists() or installed.stat().st_mtime < lock.stat().st_mtime:
        done = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--omit=dev"],
            cwd=PEER_DIR,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if done.returncode != 0:
            raise NodeMissing(f"npm ci failed in bench/node_peer:\n{done.stdout}{done.stderr}")
    import json

    meta = json.loads((PEER_DIR / "node_modules" / "pg" / "package.json").read_text())
    return str(meta["version"])


def peer(name: str, url: str, workers: int, log_dir: Path) -> procs.Server:
    """The peer under node:cluster with `workers` workers, on a free loopback port."""
    port = free_port(net.HOST)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DATABASE_URL")}
    env.update(
        DATABASE_URL=url,
        PORT=str(port),
        HOST=net.HOST,
        WEB_CONCURRENCY=str(workers),
        SECRET_KEY=procs.SECRET_KEY,
        NODE_ENV="production",
    )
    argv = [find("node"), str(Path("bench") / "node_peer" / "server.js")]
    return procs.Server(name, argv, env, log_dir=log_dir, port=port, workers=workers)
