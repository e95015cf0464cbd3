"""The things the benchmark starts: a throwaway database and server processes.

Every process is started in its own session and remembered; `stop_all()` ends each one
by its pid (the launcher first, then any child it left), also after Ctrl-C or an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import psutil

from bench import net

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
SECRET_KEY = "ripple-benchmark-" + secrets.token_hex(16)
METRICS_TOKEN = "ripple-benchmark-metrics-" + secrets.token_hex(8)

_started: list[Server] = []


def raise_open_file_limit() -> int:
    """Every stream is a socket on both ends; children inherit the raised limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = 1_048_576 if hard == resource.RLIM_INFINITY else hard
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((net.HOST, 0))
        return int(sock.getsockname()[1])


# -- the database -----------------------------------------------------------------------


def database_url(admin_url: str, name: str) -> str:
    parts = urlsplit(admin_url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, ""))


async def create_database(admin_url: str) -> tuple[str, str]:
    name = f"ripple_bench_{secrets.token_hex(6)}"
    conn = await asyncpg.connect(admin_url, timeout=10)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return name, database_url(admin_url, name)


def migrate(url: str) -> None:
    env = {**os.environ, "DATABASE_URL": url}
    env.pop("DATABASE_URL_UNPOOLED", None)
    done = subprocess.run(
        [sys.executable, "-m", "alembic", "upgrade", "head"],
        cwd=ROOT,
        env=env,
        timeout=120,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise RuntimeError(f"alembic upgrade head failed:\n{done.stdout}{done.stderr}")


async def drop_database(admin_url: str, name: str) -> None:
    conn = await asyncpg.connect(admin_url, timeout=10)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def server_facts(url: str) -> dict[str, str]:
    conn = await asyncpg.connect(url, timeout=10)
    try:
        return {
            "postgres": str(await conn.fetchval("SHOW server_version")),
            "max_connections": str(await conn.fetchval("SHOW max_connections")),
            "synchronous_commit": str(await conn.fetchval("SHOW synchronous_commit")),
        }
    finally:
        await conn.close()


# -- servers ----------------------------------------------------------------------------


@dataclass
class Server:
    """One instance: a launcher process and its workers."""

    name: str
    port: int
    workers: int
    argv: list[str]
    env: dict[str, str]
    health_path: str
    popen: subprocess.Popen[bytes] | None = None
    log: IO[bytes] | None = None
    temp_dirs: list[str] = field(default_factory=list)
    _procs: dict[int, psutil.Process] = field(default_factory=dict)

    def start(self, log_dir: Path) -> None:
        self.log = (log_dir / f"{self.name}-{self.port}.log").open("wb")
        self.popen = subprocess.Popen(
            self.argv,
            cwd=ROOT,
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        _started.append(self)

    async def wait_ready(self, timeout: float = 60.0) -> None:
        """Until the instance answers its health check with 200 (every worker listening)."""
        deadline = time.monotonic() + timeout
        raw = net.request_bytes("GET", self.health_path, self.port)
        last = "no answer"
        while time.monotonic() < deadline:
            if self.popen is not None and self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.popen.returncode}{self.tail()}")
            try:
                answer = await net.fetch(self.port, raw, timeout=5)
                if answer.status == 200:
                    self._remember_tree()
                    return
                last = f"status {answer.status}"
            except (OSError, TimeoutError) as exc:
                last = type(exc).__name__
            await asyncio.sleep(0.25)
        raise RuntimeError(f"{self.name} not ready after {timeout:.0f} s ({last}){self.tail()}")

    def tail(self, lines: int = 15) -> str:
        if self.log is None:
            return ""
        self.log.flush()
        text = Path(self.log.name).read_text(errors="replace").splitlines()[-lines:]
        return "\n" + "\n".join(text) if text else ""

    def _remember_tree(self) -> list[psutil.Process]:
        if self.popen is None:
            return []
        with contextlib.suppress(psutil.Error):
            root = psutil.Process(self.popen.pid)
            for proc in [root, *root.children(recursive=True)]:
                self._procs.setdefault(proc.pid, proc)
        return [p for p in self._procs.values() if p.is_running()]

    def sample(self) -> tuple[float, int]:
        """(CPU seconds so far, resident bytes) summed over the launcher and its workers."""
        cpu = 0.0
        rss = 0
        for proc in self._remember_tree():
            with contextlib.suppress(psutil.Error):
                times = proc.cpu_times()
                cpu += times.user + times.system
                rss += proc.memory_info().rss
        return cpu, rss

    def stop(self, grace: float = 8.0) -> None:
        """SIGTERM the launcher, wait, then SIGKILL whatever of its tree is left, by pid."""
        if self.popen is None:
            return
        procs = self._remember_tree()
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(grace)
        _, alive = psutil.wait_procs(procs, timeout=1.0)
        for proc in alive:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(5)
        if self.log is not None:
            self.log.close()
        for path in self.temp_dirs:
            shutil.rmtree(path, ignore_errors=True)
        with contextlib.suppress(ValueError):
            _started.remove(self)
        self.popen = None


def stop_all() -> None:
    for server in list(reversed(_started)):
        with contextlib.suppress(Exception):
            server.stop(grace=3.0)


def ripple_env(url: str, port: int, workers: int, max_streams: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "RIPPLE_"))}
    env.update(
        DATABASE_URL=url,
        PORT=str(port),
        WEB_CONCURRENCY=str(workers),
        RATE_LIMIT_PER_MINUTE="0",
        MAX_STREAMS_PER_CLIENT="0",
        MAX_STREAMS_PER_WORKER=str(max(10_000, max_streams)),
        APP_ENV="production",
        SECRET_KEY=SECRET_KEY,
        METRICS_TOKEN=METRICS_TOKEN,
        PYTHONUNBUFFERED="1",
    )
    return env


def ripple(name: str, url: str, workers: int, max_streams: int, server: str) -> Server:
    """Ripple as deployed: `python -m app serve`, or the same app under granian."""
    port = free_port()
    env = ripple_env(url, port, workers, max_streams)
    if server == "uvicorn":
        argv = [sys.executable, "-m", "app", "serve"]
        return Server(name, port, workers, argv, env, "/healthz")
    metrics_dir = tempfile.mkdtemp(prefix="ripple-bench-metrics-")
    env["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    env["RIPPLE_INSTANCE_ID"] = f"bench-granian-{secrets.token_hex(4)}"
    backlog = 4096
    argv = [
        sys.executable, "-m", "granian", "--interface", "asgi", "--workers", str(workers),
        "--host", net.HOST, "--port", str(port), "--loop", "uvloop", "--http", "1",
        "--no-access-log", "--log-level", "warning", "--backlog", str(backlog),
        # Granian admits backlog/workers requests per worker by default; a stream is a
        # request for its whole life, so lift it above the streams we will open.
        "--backpressure", str(max(10_000, max_streams)),
        "app.asgi:app",
    ]  # fmt: skip
    return Server(name, port, workers, argv, env, "/healthz", temp_dirs=[metrics_dir])


def baseline(name: str, url: str, workers: int) -> Server:
    """The naive app under uvicorn, the way its tutorials run it."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DATABASE_URL")}
    env.update(DATABASE_URL=url, SECRET_KEY=SECRET_KEY, PYTHONUNBUFFERED="1")
    argv = [
        sys.executable, "-m", "uvicorn", "bench.baseline_app:app", "--host", net.HOST,
        "--port", str(port), "--workers", str(workers), "--no-access-log",
        "--log-level", "warning", "--timeout-graceful-shutdown", "3",
    ]  # fmt: skip
    return Server(name, port, workers, argv, env, "/healthz")


# -- nginx in front of two instances ------------------------------------------------------

NGINX_CANDIDATES = ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/sbin/nginx")
NGINX_WORKER_PROCESSES = 1  # see docs/benchmarks.md, "Through nginx"
FRAGMENT_LOG = "fragments.log"


class ProxyMissing(RuntimeError):
    """The proxy the run asked for is not installed."""


def find_nginx() -> str:
    """The nginx binary: RIPPLE_BENCH_NGINX, else `nginx` on PATH or in the sbin directories."""
    named = os.environ.get("RIPPLE_BENCH_NGINX", "").strip()
    if named:
        if not os.access(named, os.X_OK):
            raise ProxyMissing(f"RIPPLE_BENCH_NGINX={named} is not an executable file")
        return named
    found = shutil.which("nginx") or next(
        (path for path in NGINX_CANDIDATES if os.access(path, os.X_OK)), None
    )
    if found is None:
        raise ProxyMissing(
            "--proxy nginx needs nginx, which is not installed: on Debian or Ubuntu "
            "`apt-get install nginx-light` (or point RIPPLE_BENCH_NGINX at a binary)"
        )
    return found


def nginx_version(binary: str) -> str:
    done = subprocess.run([binary, "-v"], capture_output=True, text=True, timeout=10)
    text = (done.stderr or done.stdout).strip()
    return text.split("/", 1)[1] if "/" in text else text


def nginx_conf(
    directory: Path, port: int, upstreams: list[int], max_streams: int, lock_timeout_ms: int
) -> str:
    """The proxy: streams balanced over the instances, item fragments cached, rest passed.

    Every path nginx writes (logs, cache, temp files) is inside `directory`; the pid file
    and `daemon off` come from the command line. A request waiting on the cache lock is
    not woken when the first answer lands: nginx looks again after 500 ms or after the
    lock timeout, whichever is sooner. So `lock_timeout_ms` is about what a waiter waits;
    then it is served from the cache if the answer is in, else passed to an instance
    itself (and that answer not cached).
    """
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    # A stream holds two connections (client and upstream); the fetch pools a few more.
    connections = min(nofile - 64, max(4096, 2 * max_streams + 2048))
    if connections < 2 * max_streams + 256:
        raise RuntimeError(
            f"open-file limit {nofile} is too low for {max_streams} streams through nginx "
            "(two descriptors per stream): raise the hard limit (ulimit -Hn)"
        )
    servers = "\n".join(f"        server {net.HOST}:{p};" for p in upstreams)
    d = directory
    return f"""\
worker_processes {NGINX_WORKER_PROCESSES};
worker_rlimit_nofile {nofile};
error_log {d}/error.log warn;

events {{
    worker_connections {connections};
}}

http {{
    access_log off;
    default_type application/octet-stream;
    server_tokens off;
    keepalive_timeout 75s;
    keepalive_requests 100000;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy_temp;
    fastcgi_temp_path {d}/fastcgi_temp;
    uwsgi_temp_path {d}/uwsgi_temp;
    scgi_temp_path {d}/scgi_temp;

    log_format fragments '$msec $status $upstream_cache_status $upstream_addr $request_uri';
    proxy_cache_path {d}/cache levels=1:2 keys_zone=ripple_items:10m max_size=256m
                     inactive=10m use_temp_path=off;

    upstream ripple {{
        zone ripple 64k;
        least_conn;
{servers}
        keepalive 64;
        keepalive_requests 100000;
        keepalive_timeout 60s;
    }}

    server {{
        listen {net.HOST}:{port} backlog=4096;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_set_header Host $http_host;
        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        proxy_set_header X-Forwarded-Proto $scheme;

        location = /events {{
            proxy_pass http://ripple;
            proxy_buffering off;
            proxy_read_timeout 1h;
            proxy_send_timeout 1h;
            proxy_next_upstream error timeout http_503;
        }}

        location ~ ^/fragments/activity/\\d+$ {{
            proxy_pass http://ripple;
            proxy_cache ripple_items;
            proxy_cache_lock on;
            proxy_cache_lock_timeout {lock_timeout_ms}ms;
            proxy_cache_valid 200 5m;
            proxy_cache_revalidate on;
            proxy_cache_use_stale error timeout updating http_502 http_503;
            add_header X-Cache-Status $upstream_cache_status always;
            access_log {d}/{FRAGMENT_LOG} fragments;
        }}

        location = /proxy-health {{
            return 200 "ok\\n";
        }}

        location / {{
            proxy_pass http://ripple;
        }}
    }}
}}
"""


@dataclass
class Nginx(Server):
    """An nginx master and its worker, on a generated config in a temp dir of its own."""

    conf_dir: Path | None = None
    log_dir: Path | None = None

    def start(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        # nginx checks the config first; a missing module or bad directive fails here.
        check = subprocess.run(
            [*self.argv, "-t"], env=self.env, capture_output=True, text=True, timeout=30
        )
        if check.returncode != 0:
            for path in self.temp_dirs:
                shutil.rmtree(path, ignore_errors=True)
            raise RuntimeError(f"nginx -t failed:\n{check.stdout}{check.stderr}")
        super().start(log_dir)

    def log_size(self) -> int:
        """How far the fragment access log has got (an offset for `cache_statuses`)."""
        assert self.conf_dir is not None
        path = self.conf_dir / FRAGMENT_LOG
        return path.stat().st_size if path.exists() else 0

    def cache_statuses(self, since: int) -> dict[str, dict[str, int]]:
        """Fragment requests logged after `since`: by cache status, HTTP status, upstream."""
        assert self.conf_dir is not None
        path = self.conf_dir / FRAGMENT_LOG
        out: dict[str, dict[str, int]] = {"cache": {}, "status": {}, "upstream": {}}
        if not path.exists():
            return out
        with path.open("rb") as log:
            log.seek(since)
            data = log.read()
        for line in data.decode("latin-1").splitlines():
            fields = line.split()
            if len(fields) < 4:
                continue
            for key, value in (("status", fields[1]), ("cache", fields[2])):
                out[key][value] = out[key].get(value, 0) + 1
            # "a, b" when a request went to two upstreams; "-" when none did.
            for addr in " ".join(fields[3:-1]).split(","):
                addr = addr.strip(" :")
                if addr and addr != "-":
                    out["upstream"][addr] = out["upstream"].get(addr, 0) + 1
        return out

    def stop(self, grace: float = 8.0) -> None:
        if self.conf_dir is not None and self.log_dir is not None:
            with contextlib.suppress(OSError):
                shutil.copyfile(
                    self.conf_dir / "error.log", self.log_dir / f"{self.name}-{self.port}-error.log"
                )
            with contextlib.suppress(OSError):
                shutil.copyfile(
                    self.conf_dir / "nginx.conf", self.log_dir / f"{self.name}-{self.port}.conf"
                )
        if self.popen is None:  # never started: nothing to stop, but its directory exists
            for path in self.temp_dirs:
                shutil.rmtree(path, ignore_errors=True)
        super().stop(grace)


def nginx(name: str, upstreams: list[int], max_streams: int, lock_timeout_ms: int) -> Nginx:
    binary = find_nginx()
    port = free_port()
    for _ in range(20):  # a port is free when asked, not reserved: not an upstream's
        if port not in upstreams:
            break
        port = free_port()
    directory = Path(tempfile.mkdtemp(prefix="ripple-bench-nginx-"))
    # When the benchmark runs as root, nginx's workers run as an unprivileged user that
    # must reach the cache and temp directories nginx creates (and chowns) in here.
    directory.chmod(0o755)
    conf = directory / "nginx.conf"
    conf.write_text(nginx_conf(directory, port, upstreams, max_streams, lock_timeout_ms))
    argv = [
        binary, "-p", f"{directory}/", "-c", str(conf), "-e", "stderr",
        "-g", f"daemon off; pid {directory}/nginx.pid;",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "RIPPLE_"))}
    return Nginx(
        name, port, NGINX_WORKER_PROCESSES, argv, env, "/proxy-health",
        temp_dirs=[str(directory)], conf_dir=directory,
    )  # fmt: skip


@dataclass
class Balanced:
    """Several Ripple instances behind one proxy, used where one instance would be.

    `port` is the proxy's; `sample()` covers the instances only (so CPU per frame and
    memory per stream stay Ripple's), `parts()` names every process group for the CPU
    breakdown, the proxy included.
    """

    name: str
    instances: list[Server]
    proxy: Nginx

    @property
    def port(self) -> int:
        return self.proxy.port

    @property
    def workers(self) -> int:
        return sum(s.workers for s in self.instances)

    def parts(self) -> list[Server]:
        return [*self.instances, self.proxy]

    def start(self, log_dir: Path) -> None:
        for server in self.parts():
            server.start(log_dir)

    async def wait_ready(self, timeout: float = 60.0) -> None:
        for server in self.parts():
            await server.wait_ready(timeout)

    def sample(self) -> tuple[float, int]:
        cpu, rss = 0.0, 0
        for server in self.instances:
            c, r = server.sample()
            cpu += c
            rss += r
        return cpu, rss

    def stop(self, grace: float = 8.0) -> None:
        for server in [self.proxy, *self.instances]:
            with contextlib.suppress(Exception):
                server.stop(grace)


Target = Server | Balanced  # what the clients connect to


def ripple_behind_nginx(
    name: str,
    url: str,
    max_streams: int,
    instances: int = 2,
    workers: int = 1,
    lock_timeout_ms: int = 100,
) -> Balanced:
    """`instances` Ripple instances of `workers` each, and nginx in front of them."""
    servers: list[Server] = []
    for i in range(instances):
        for _ in range(20):  # a port is free when asked, not reserved: never twice here
            server = ripple(f"{name}-{chr(ord('a') + i)}", url, workers, max_streams, "uvicorn")
            if server.port not in {s.port for s in servers}:
                break
        servers.append(server)
    proxy = nginx(f"{name}-proxy", [s.port for s in servers], max_streams, lock_timeout_ms)
    return Balanced(name, servers, proxy)


async def scrape_metrics(port: int, timeout: float = 10.0) -> dict[str, float]:
    """An instance's /metrics as {'name{labels}': value} (Prometheus text, no comments)."""
    request = net.request_bytes(
        "GET", "/metrics", port, headers={"Authorization": f"Bearer {METRICS_TOKEN}"}
    )
    answer = await net.fetch(port, request, timeout=timeout)
    if answer.status != 200:
        raise RuntimeError(f"GET /metrics on port {port} answered {answer.status}")
    found: dict[str, float] = {}
    for line in answer.body.decode("utf-8", "replace").splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        with contextlib.suppress(ValueError):
            found[key.strip()] = float(value)
    return found
