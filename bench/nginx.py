"""nginx in front of Ripple instances (`--proxy nginx`): finding it, its config, running it."""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Self

from support.ports import free_port
from support.process import HttpReady

from bench import net
from bench.procs import Server

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


class Nginx(Server):
    """An nginx master and its worker, on a generated config in a temp dir of its own."""

    def __init__(
        self, name: str, argv: list[str], env: dict[str, str], *, log_dir: Path, port: int,
        conf_dir: Path,
    ) -> None:  # fmt: skip
        super().__init__(
            name, argv, env, log_dir=log_dir, port=port, workers=NGINX_WORKER_PROCESSES,
            ready=HttpReady("/proxy-health"), temp_dirs=[str(conf_dir)],
        )  # fmt: skip
        self.conf_dir = conf_dir
        self.log_dir = log_dir

    def start(self) -> Self:
        # nginx checks the config first; a missing module or bad directive fails here.
        check = subprocess.run(
            [*self.argv, "-t"], env=self.env, capture_output=True, text=True, timeout=30
        )
        if check.returncode != 0:
            self.remove_temp_dirs()
            raise RuntimeError(f"nginx -t failed:\n{check.stdout}{check.stderr}")
        return super().start()

    def log_size(self) -> int:
        """How far the fragment access log has got (an offset for `cache_statuses`)."""
        path = self.conf_dir / FRAGMENT_LOG
        return path.stat().st_size if path.exists() else 0

    def cache_statuses(self, since: int) -> dict[str, dict[str, int]]:
        """Fragment requests logged after `since`: by cache status, HTTP status, upstream."""
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

    def stop(self, timeout: float = 8.0) -> int | None:
        """Stop, keeping its error log and config beside the other logs."""
        stem = f"{self.name}-{self.port}"
        for name, kept in (("error.log", f"{stem}-error.log"), ("nginx.conf", f"{stem}.conf")):
            with contextlib.suppress(OSError):
                shutil.copyfile(self.conf_dir / name, self.log_dir / kept)
        return super().stop(timeout)


def nginx(
    name: str, upstreams: list[int], max_streams: int, lock_timeout_ms: int, log_dir: Path
) -> Nginx:
    binary = find_nginx()
    port = free_port(net.HOST)  # never one handed out before, so not an upstream's
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
    return Nginx(name, argv, env, log_dir=log_dir, port=port, conf_dir=directory)
