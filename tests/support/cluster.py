"""A throwaway PostgreSQL cluster of our own, to stop, start and break at will; also a
streaming standby of one (``standby_of``), to promote for a failover."""

import asyncio
import contextlib
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Self

from . import database, reaper
from .ports import free_port
from .system import give_to_service_user, postgres_bindir, run_checked

# Durability is not what these clusters are for; speed is.
FAST_SETTINGS = {
    "listen_addresses": "127.0.0.1",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "300",
}


class PgCluster:
    """``initdb`` into a temporary directory and ``pg_ctl`` on a fixed free port.

    The port stays the same across ``stop()``/``start()``, so clients can reconnect to the
    same URL after an outage. When we are root, the directory is given to the ``postgres``
    user and the binaries run as that user (initdb, pg_ctl and postgres refuse root).
    """

    def __init__(self, *, port: int | None = None, timeout: float = 60.0) -> None:
        self.port = port or free_port()
        self.timeout = timeout
        self.bindir = postgres_bindir()
        # Not under pytest's tmp_path: its directories are private to root, and the server
        # runs as another user that must reach the data directory.
        self.base_dir = Path(tempfile.mkdtemp(prefix="ripple-pg-"))
        self.data_dir = self.base_dir / "data"
        self.socket_dir = self.base_dir / "socket"
        self.log_path = self.base_dir / "postgres.log"
        self._initialised = False

    @property
    def url(self) -> str:
        return self.url_for("postgres")

    def url_for(self, dbname: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def _run(self, *argv: str) -> str:
        return run_checked(
            [str(self.bindir / argv[0]), *argv[1:]],
            timeout=self.timeout + 10,
            cwd=self.base_dir,
            as_service=True,
        )

    def init(self) -> None:
        self.socket_dir.mkdir(exist_ok=True)
        give_to_service_user(self.base_dir)
        reaper.track(self, self.destroy)
        self._run(
            "initdb",
            "--pgdata",
            str(self.data_dir),
            "--username",
            "postgres",
            "--auth",
            "trust",
            "--encoding",
            "UTF8",
            "--locale",
            "C",
            "--no-sync",
            "--no-instructions",
        )
        self._initialised = True

    @classmethod
    def standby_of(cls, primary: "PgCluster", *, timeout: float = 60.0) -> "PgCluster":
        """A streaming replica of a running ``primary``, started on its own port.

        ``pg_basebackup -R`` copies the primary and writes ``standby.signal`` and
        ``primary_conninfo``; initdb's default pg_hba.conf already trusts replication
        connections from 127.0.0.1. Destroy it like any cluster.
        """
        standby = cls(timeout=timeout)
        give_to_service_user(standby.base_dir)
        reaper.track(standby, standby.destroy)
        try:
            standby._run(
                "pg_basebackup",
                "--pgdata",
                str(standby.data_dir),
                "--host",
                "127.0.0.1",
                "--port",
                str(primary.port),
                "--username",
                "postgres",
                "--write-recovery-conf",
                "--wal-method",
                "stream",
                "--checkpoint",
                "fast",
                "--no-sync",
            )
            standby.socket_dir.mkdir(exist_ok=True)
            give_to_service_user(standby.socket_dir)
            standby._initialised = True
            standby.start()
        except BaseException:
            standby.destroy()
            raise
        return standby

    def promote(self) -> None:
        """End recovery on a standby: it becomes a read-write primary (``pg_ctl promote``)."""
        self._run(
            "pg_ctl",
            "--pgdata",
            str(self.data_dir),
            "--wait",
            "--timeout",
            str(int(self.timeout)),
            "promote",
        )

    def start(self) -> Self:
        """Start (initialising on first use) and wait until it accepts connections."""
        if not self._initialised:
            self.init()
        options = [f"-p {self.port}", f"-k {self.socket_dir}"]
        options += [f"-c {name}={value}" for name, value in FAST_SETTINGS.items()]
        try:
            self._run(
                "pg_ctl",
                "--pgdata",
                str(self.data_dir),
                "--log",
                str(self.log_path),
                "--options",
                " ".join(options),
                "--wait",
                "--timeout",
                str(int(self.timeout)),
                "start",
            )
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}\n--- postgres log ---\n{self.log_tail()}") from exc
        return self

    def stop(self, mode: str = "fast") -> None:
        """Shut down (``fast``: disconnect clients, ``immediate``: like a crash)."""
        self._run(
            "pg_ctl",
            "--pgdata",
            str(self.data_dir),
            "--mode",
            mode,
            "--wait",
            "--timeout",
            str(int(self.timeout)),
            "stop",
        )

    def is_running(self) -> bool:
        if not self._initialised or not self.data_dir.exists():
            return False
        try:
            self._run("pg_ctl", "--pgdata", str(self.data_dir), "status")
        except RuntimeError:
            return False
        return True

    def postmaster_pid(self) -> int | None:
        try:
            return int((self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
        except (FileNotFoundError, ValueError):
            return None

    def destroy(self) -> None:
        """Stop at once if running and delete every file."""
        try:
            if self.is_running():
                with contextlib.suppress(RuntimeError, subprocess.SubprocessError):
                    self.stop(mode="immediate")
        finally:
            shutil.rmtree(self.base_dir, ignore_errors=True)
            reaper.untrack(self)

    async def astart(self) -> Self:
        return await asyncio.to_thread(self.start)

    async def astop(self, mode: str = "fast") -> None:
        await asyncio.to_thread(self.stop, mode)

    async def apromote(self) -> None:
        await asyncio.to_thread(self.promote)

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except (FileNotFoundError, PermissionError):
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.destroy()

    def __repr__(self) -> str:
        return f"PgCluster(port={self.port}, data_dir={self.data_dir})"


async def wait_until_replayed(
    primary: PgCluster, standby: PgCluster, timeout: float = 30.0
) -> None:
    """Wait until ``standby`` has replayed all the WAL ``primary`` has written so far."""
    written = await database.fetchval(primary.url, "SELECT pg_current_wal_lsn()::text")
    deadline = time.monotonic() + timeout
    while True:
        replayed = await database.fetchval(
            standby.url, "SELECT pg_last_wal_replay_lsn() >= $1::text::pg_lsn", written
        )
        if replayed:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"standby has not replayed {written} within {timeout} s")
        await asyncio.sleep(0.1)
