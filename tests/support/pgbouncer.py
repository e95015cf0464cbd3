"""A real PgBouncer (Debian's binary) in transaction mode in front of a PostgreSQL server."""

import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Self

from . import reaper
from .ports import free_port
from .process import ManagedProcess, TcpReady
from .system import as_service_user, find_sbin, give_to_service_user


class PgBouncer(ManagedProcess):
    """PgBouncer listening on 127.0.0.1 at a free port, forwarding every database name.

    PgBouncer refuses to run as root, so when we are root it runs as the ``postgres`` user
    with its files handed over to that user. It runs in the foreground in its own process
    group, logging to ``log_path``. Version 1.18 (Debian 12) has no prepared statements in
    transaction mode: asyncpg clients need ``statement_cache_size=0``.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 5432,
        *,
        pool_mode: str = "transaction",
        users: Sequence[str] = ("postgres",),
        max_client_conn: int = 5000,
        default_pool_size: int = 20,
        settings: Mapping[str, str] | None = None,
        timeout: float = 15.0,
    ) -> None:
        self.target = (host, port)
        self.binary = find_sbin("pgbouncer")
        # Not under pytest's tmp_path: the postgres user must be able to read it.
        self.base_dir = Path(tempfile.mkdtemp(prefix="ripple-pgbouncer-"))
        self.ini_path = self.base_dir / "pgbouncer.ini"
        self.auth_file = self.base_dir / "userlist.txt"
        super().__init__(
            "pgbouncer",
            [self.binary, str(self.ini_path)],
            env=os.environ,
            log_path=self.base_dir / "pgbouncer.log",
            port=free_port(),
            ready=TcpReady(),
            startup_timeout=timeout,
            cwd=self.base_dir,
            popen_kwargs=as_service_user(),
        )
        config = {
            "listen_addr": "127.0.0.1",
            "listen_port": str(self.port),
            "unix_socket_dir": "",
            "auth_type": "trust",
            "auth_file": str(self.auth_file),
            "pool_mode": pool_mode,
            "max_client_conn": str(max_client_conn),
            "default_pool_size": str(default_pool_size),
            "admin_users": users[0] if users else "postgres",
            "pidfile": "",
            "logfile": "",
            # Sent by psql and psycopg; harmless to drop.
            "ignore_startup_parameters": "extra_float_digits",
            **(settings or {}),
        }
        self.auth_file.write_text("".join(f'"{user}" ""\n' for user in users))
        self.ini_path.write_text(
            "[databases]\n"
            f"* = host={host} port={port}\n\n"
            "[pgbouncer]\n" + "".join(f"{key} = {value}\n" for key, value in config.items())
        )

    def url_for(self, dbname: str, user: str = "postgres") -> str:
        return f"postgresql://{user}@127.0.0.1:{self.port}/{dbname}"

    def start(self) -> Self:
        """Start in the foreground and wait (bounded) until it accepts TCP connections."""
        give_to_service_user(self.base_dir)
        try:
            super().start()
        except BaseException:
            self.destroy()
            raise
        reaper.track(self, self.destroy)  # its files go too
        return self

    def destroy(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.base_dir, ignore_errors=True)
            reaper.untrack(self)

    def __exit__(self, *exc_info: object) -> None:
        self.destroy()

    def __repr__(self) -> str:
        return f"PgBouncer(port={self.port}, target={self.target})"
