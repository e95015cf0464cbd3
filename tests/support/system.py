"""Running PostgreSQL's and PgBouncer's binaries, which refuse to run as root.

When we are root (CI, containers) they run as the ``postgres`` user: ``subprocess`` switches
user and group itself (``user=``/``group=``), so no ``runuser``/``su`` process sits between us
and the server and signals reach the server directly.
"""

import glob
import os
import pwd
import re
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

SERVICE_USER = "postgres"


def running_as_root() -> bool:
    return os.geteuid() == 0


def as_service_user() -> dict[str, Any]:
    """Keyword arguments for ``subprocess`` that drop root to the ``postgres`` user."""
    if not running_as_root():
        return {}
    try:
        pwd.getpwnam(SERVICE_USER)
    except KeyError as exc:
        raise RuntimeError(
            f"running as root, but there is no {SERVICE_USER!r} user to run PostgreSQL tools as"
        ) from exc
    return {"user": SERVICE_USER, "group": SERVICE_USER, "extra_groups": []}


def give_to_service_user(path: Path) -> None:
    """Make ``path`` (recursively) owned by the service user when we are root."""
    if not running_as_root():
        return
    shutil.chown(path, SERVICE_USER, SERVICE_USER)
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            shutil.chown(os.path.join(root, name), SERVICE_USER, SERVICE_USER)


def _version_key(path: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", path))


def postgres_bindir() -> Path:
    """The directory holding ``initdb``, ``pg_ctl`` and ``postgres``.

    ``RIPPLE_PG_BINDIR`` wins; then Debian's versioned directories (newest first), then
    ``pg_config --bindir``, then ``PATH``. On Debian ``pg_config`` may belong to another
    package than the server, so it is not trusted first.
    """
    override = os.environ.get("RIPPLE_PG_BINDIR")
    candidates: list[str] = [override] if override else []
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key, reverse=True)
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
            )
            candidates.append(out.stdout.strip())
        except (OSError, subprocess.SubprocessError):
            pass
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(str(Path(initdb).parent))
    for candidate in candidates:
        if (Path(candidate) / "initdb").is_file() and (Path(candidate) / "pg_ctl").is_file():
            return Path(candidate)
    raise RuntimeError(
        "no PostgreSQL server binaries (initdb, pg_ctl) found; install the Debian package "
        "'postgresql' or set RIPPLE_PG_BINDIR"
    )


def find_sbin(name: str) -> str:
    """A binary that Debian installs under an sbin directory, which may not be on PATH."""
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin", "/sbin"])
    found = shutil.which(name, path=search)
    if not found:
        raise RuntimeError(f"{name!r} not found; install it (scripts/test does: apt-get install)")
    return found


def run_checked(
    argv: Sequence[str], *, timeout: float, cwd: Path | None = None, as_service: bool = False
) -> str:
    """Run a command to completion; raise with its output if it fails or takes too long."""
    extra = as_service_user() if as_service else {}
    try:
        done = subprocess.run(
            list(argv),
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            **extra,
        )
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"{argv[0]} took longer than {timeout} s: {argv}") from exc
    if done.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv)} failed with exit code {done.returncode}:\n"
            f"{done.stdout}\n{done.stderr}"
        )
    output: str = done.stdout
    return output
