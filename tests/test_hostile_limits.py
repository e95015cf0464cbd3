"""Abuse limits and production settings, attacked on running servers sharing one database:
rate limits across workers and instances, who counts as the client behind a proxy, caps on
open streams, production cookies and headers, and refusing to start without a secret.

Three instances on a database of this module's own:
  a: two workers, the default trusted proxy (127.0.0.1), no stream cap
  b: one worker, at most 2 streams per visitor or IP and 4 per worker
  c: production, trusting only a proxy that is not 127.0.0.1
Rate limits: RATE_LIMIT_PER_MINUTE=2, so per minute a visitor may post or rename 2 times and
increment 20 times, and one IP may post or rename 10 times.
"""

import asyncio
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from support import database
from support.paths import REPO_ROOT
from support.ports import free_port
from support.server import APP_VARIABLES, AppServer
from support.sse import SSEClient
from support.visitors import Visitor

COOKIE = "ripple_visitor"
PER_MINUTE = 2
WRITES_PER_VISITOR = PER_MINUTE
INCREMENTS_PER_VISITOR = PER_MINUTE * 10
WRITES_PER_IP = PER_MINUTE * 5
PRODUCTION_SECRET = "a-long-random-production-secret-for-tests-only"


@dataclass
class Servers:
    a: AppServer
    b: AppServer
    c: AppServer
    db: str


@pytest.fixture(scope="module")
def servers(admin_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    url = asyncio.run(database.create_database(admin_url))
    started: list[AppServer] = []
    try:
        database.migrate(url)
        limited = {"RATE_LIMIT_PER_MINUTE": str(PER_MINUTE)}
        specs = [
            ({**limited, "MAX_STREAMS_PER_CLIENT": "0"}, 2),
            ({**limited, "MAX_STREAMS_PER_CLIENT": "2", "MAX_STREAMS_PER_WORKER": "4"}, 1),
            (
                {
                    **limited,
                    "APP_ENV": "production",
                    "SECRET_KEY": PRODUCTION_SECRET,
                    "FORWARDED_ALLOW_IPS": "192.0.2.1",
                },
                1,
            ),
        ]
        for env, workers in specs:
            log_dir = tmp_path_factory.mktemp("limits-server")
            started.append(
                AppServer(url, env, workers=workers, log_dir=log_dir, startup_timeout=60)
            )
        with ThreadPoolExecutor(len(started)) as pool:
            list(pool.map(AppServer.start, started))
        a, b, c = started
        yield Servers(a, b, c, db=url)
    finally:
        for server in started:
            server.stop()
        asyncio.run(database.drop_database(url, admin_url))


def _client(base_url: str, ip: str | None = None, cookies: httpx.Cookies | None = None) -> Visitor:
    """A JSON client opening a new connection per request (so requests reach every worker)."""
    headers = {"accept": "application/json"}
    if ip is not None:
        headers["x-forwarded-for"] = ip
    client = httpx.AsyncClient(
        base_url=base_url,
        headers=headers,
        cookies=cookies,
        limits=httpx.Limits(max_keepalive_connections=0),
        timeout=10,
    )
    return Visitor(client)


async def _fresh_window(db: str, need: float = 15.0) -> None:
    """Limits count per minute by the database clock: start where `need` seconds remain."""
    left = float(
        await database.fetchval(
            db, "SELECT 60 - extract(epoch FROM now() - date_trunc('minute', now()))"
        )
    )
    if left < need:
        await asyncio.sleep(left + 0.3)


def _assert_limited(response: httpx.Response) -> int:
    assert response.status_code == 429, (response.request.url, response.text)
    retry_after = int(response.headers["retry-after"])
    assert 1 <= retry_after <= 60
    assert "Too many requests" in response.json()["detail"]
    assert "content-security-policy" in response.headers
    return retry_after


async def _hits(db: str, key: str) -> int:
    value = await database.fetchval(
        db, "SELECT coalesce(sum(hits), 0) FROM rate_buckets WHERE key = $1", key
    )
    return int(value)


async def test_rate_limits_count_across_workers_and_instances_and_spare_reads(
    servers: Servers,
) -> None:
    ip = "198.51.100.11"
    on_a = _client(servers.a.base_url, ip)
    await on_a.get("/")
    on_b = _client(servers.b.base_url, ip, cookies=on_a.client.cookies)  # the same visitor
    try:
        visitor_id = on_a.cookies()[COOKIE].split(".")[1]
        await _fresh_window(servers.db)
        counter_before = (await on_a.get("/fragments/counter")).json()["value"]

        assert (await on_a.post("first, through a")).status_code == 201
        assert (await on_b.rename("Through B")).status_code == 200
        for refused in [
            await on_a.post("third"),
            await on_b.post("fourth"),
            await on_a.rename("C"),
        ]:
            _assert_limited(refused)
        messages = await database.fetchval(
            servers.db,
            "SELECT count(*) FROM activity WHERE author_id = $1 AND kind = 'message'",
            visitor_id,
        )
        assert messages == 1
        name = await database.fetchval(
            servers.db, "SELECT name FROM visitors WHERE id = $1", visitor_id
        )
        assert name == "Through B"

        for n in range(INCREMENTS_PER_VISITOR):
            answer = await (on_a if n % 2 else on_b).increment()
            assert answer.status_code == 200, (n, answer.text)
        _assert_limited(await on_a.increment())
        _assert_limited(await on_b.increment())
        counter = (await on_b.get("/fragments/counter")).json()["value"]
        assert counter == counter_before + INCREMENTS_PER_VISITOR

        # Reads are never limited, even for a visitor over every write limit.
        for n in range(30):
            client = on_a if n % 2 else on_b
            path = ["/", "/fragments/counter", "/fragments/activity", "/fragments/presence"][n % 4]
            assert (await client.get(path)).status_code == 200
        async with SSEClient.open(
            servers.a.base_url, cookies=on_a.cookie_header(), headers={"x-forwarded-for": ip}
        ) as stream:
            assert stream.status == 200
        assert len(servers.a.worker_pids()) == 2
    finally:
        await on_a.aclose()
        await on_b.aclose()


async def test_per_ip_limits_count_the_forwarded_client_of_a_trusted_proxy(
    servers: Servers,
) -> None:
    ip, other_ip = "198.51.100.22", "198.51.100.23"
    crowd = _client(servers.a.base_url, ip)  # many visitors behind one address
    await crowd.get("/")
    other = _client(servers.b.base_url, other_ip, cookies=crowd.client.cookies)
    try:
        await _fresh_window(servers.db)
        for n in range(WRITES_PER_IP):
            crowd.client.cookies.delete(COOKIE)  # a new visitor each time
            crowd.client.base_url = httpx.URL([servers.a.base_url, servers.b.base_url][n % 2])
            assert (await crowd.post(f"crowd member {n}")).status_code == 201
        crowd.client.cookies.delete(COOKIE)
        _assert_limited(await crowd.post("one too many from this address"))
        # Naming another client first in the header does not help: the trusted proxy
        # appended the real one, and that is the one that counts.
        crowd.client.cookies.delete(COOKIE)
        spoofed = await crowd.client.post(
            "/activity",
            data={"message": "spoofed"},
            headers={"x-forwarded-for": f"203.0.113.99, {ip}"},
        )
        _assert_limited(spoofed)
        other.client.cookies.delete(COOKIE)
        assert (await other.post("another address is not limited")).status_code == 201
        assert await _hits(servers.db, f"ip:{ip}:write") == WRITES_PER_IP + 2
        assert await _hits(servers.db, "ip:203.0.113.99:write") == 0
        assert await _hits(servers.db, "ip:127.0.0.1:write") == 0  # the socket peer
    finally:
        await crowd.aclose()
        await other.aclose()


def _set_cookies(response: httpx.Response) -> dict[str, tuple[str, set[str]]]:
    found = {}
    for header in response.headers.get_list("set-cookie"):
        pair, *attributes = header.split(";")
        name, _, value = pair.partition("=")
        found[name.strip()] = (value, {a.strip().lower() for a in attributes})
    return found


async def test_forwarded_for_is_ignored_when_the_peer_is_not_a_trusted_proxy(
    servers: Servers,
) -> None:
    base = servers.c.base_url  # production: trusts only 192.0.2.1
    async with httpx.AsyncClient(base_url=base, timeout=10) as raw:
        # Secure cookies are not sent over http by a client jar: carry them by hand.
        token = _set_cookies(await raw.get("/"))["csrftoken"][0]
        headers = {
            "cookie": f"csrftoken={token}",
            "x-csrftoken": token,
            "accept": "application/json",
        }
        await _fresh_window(servers.db)
        for n in range(WRITES_PER_IP):
            posted = await raw.post(
                "/activity",
                data={"message": f"claims to be {n}"},
                headers={**headers, "x-forwarded-for": f"203.0.113.{n + 1}"},
            )
            assert posted.status_code == 201, posted.text
        refused = await raw.post(
            "/activity",
            data={"message": "yet another claimed address"},
            headers={**headers, "x-forwarded-for": "203.0.113.200"},
        )
        _assert_limited(refused)
    assert await _hits(servers.db, "ip:127.0.0.1:write") == WRITES_PER_IP + 1
    for n in [1, 5, 200]:
        assert await _hits(servers.db, f"ip:203.0.113.{n}:write") == 0


async def test_open_streams_are_capped_per_visitor_per_ip_and_per_worker(
    servers: Servers,
) -> None:
    base = servers.b.base_url  # one worker: at most 2 per visitor or IP, 4 in all
    visitor = _client(base, "198.51.100.31")
    await visitor.get("/")
    cookies = visitor.cookie_header()
    opened: list[SSEClient] = []

    async def stream(ip: str, with_cookie: bool) -> SSEClient:
        client = await SSEClient.connect(
            base,
            headers={"x-forwarded-for": ip},
            cookies=cookies if with_cookie else None,
            timeout=5,
        )
        opened.append(client)
        return client

    async def refused(client: SSEClient, status: int) -> None:
        assert client.status == status
        assert 1 <= int(client.headers["retry-after"]) <= 60
        body = (await client.read_body()).decode()
        assert "Stream refused" in body
        assert "Traceback" not in body

    try:
        first = await stream("198.51.100.31", True)
        second = await stream("198.51.100.31", True)
        for ok in (first, second):
            assert ok.status == 200
            await ok.wait_for_event("ping", timeout=5)
        await refused(await stream("198.51.100.31", True), 429)  # visitor and IP at the cap
        await refused(await stream("198.51.100.32", True), 429)  # the visitor, elsewhere
        await refused(await stream("198.51.100.31", False), 429)  # someone else, same IP
        for ip in ["198.51.100.33", "198.51.100.34"]:
            assert (await stream(ip, False)).status == 200
        await refused(await stream("198.51.100.35", False), 503)  # the worker is full
        assert (await visitor.get("/fragments/counter")).status_code == 200  # reads still work

        await first.aclose()
        deadline = time.monotonic() + 10
        while True:  # the server notices the closed stream and frees its slots
            again = await stream("198.51.100.31", True)
            if again.status == 200:
                break
            assert again.status in {429, 503}
            assert time.monotonic() < deadline, "a closed stream never freed its slot"
            await again.aclose()
            await asyncio.sleep(0.2)
    finally:
        for client in opened:
            await client.aclose()
        await visitor.aclose()


async def test_production_sets_secure_cookies_and_headers_and_never_shows_a_stack_trace(
    servers: Servers,
) -> None:
    async with httpx.AsyncClient(base_url=servers.c.base_url, timeout=10) as raw:
        page = await raw.get("/")
        assert page.status_code == 200
        cookies = _set_cookies(page)
        identity, identity_flags = cookies[COOKIE]
        assert {"secure", "httponly", "samesite=lax", "path=/"} <= identity_flags
        token, token_flags = cookies["csrftoken"]
        assert {"secure", "samesite=lax"} <= token_flags
        assert "httponly" not in token_flags  # the page script copies it into the header
        assert page.headers["strict-transport-security"].startswith("max-age=")
        jar = f"{COOKIE}={identity}; csrftoken={token}"
        good = {"cookie": jar, "x-csrftoken": token}
        cases: list[tuple[str, str, dict[str, str], bytes | None, int]] = [
            ("GET", "/nope", {}, None, 404),
            ("GET", "/fragments/activity/99999999999999999999999", {}, None, 404),
            ("GET", "/fragments/activity?after=%C2%B2", {}, None, 400),
            ("DELETE", "/activity", good, None, 405),
            ("POST", "/activity", {"cookie": jar}, b"message=x", 403),
            ("POST", "/activity", {**good, "x-csrftoken": "\xe9" * 129}, b"message=x", 403),
            ("POST", "/activity", good, b"message=%FF", 422),
            ("POST", "/activity", good, b"message=" + b"x" * 40_000, 413),
            ("POST", "/me", good, b"name=" + b"n" * 41, 422),
        ]
        for method, path, headers, body, status in cases:
            raw_headers = {
                **headers,
                "content-type": "application/x-www-form-urlencoded",
                "accept": "text/html",
                "hx-request": "true",  # a plain form post's refusal is the page (test_browser_nojs)
            }
            response = await raw.request(
                method,
                path,
                content=body,
                headers={k.encode(): v.encode("latin-1") for k, v in raw_headers.items()},
            )
            assert response.status_code == status, (method, path, response.text)
            assert "Traceback" not in response.text
            assert response.headers["content-type"] == "text/plain; charset=utf-8"
            assert "strict-transport-security" in response.headers
            assert response.headers["content-security-policy"].startswith("default-src 'self'")
        tampered = await raw.get("/", headers={"cookie": f"{COOKIE}={identity[:-2]}xx"})
        assert tampered.status_code == 200
        assert _set_cookies(tampered)[COOKIE][0] != identity  # a fresh identity
        async with SSEClient.open(servers.c.base_url, cookies=jar) as stream:
            assert stream.status == 200
            assert "strict-transport-security" in stream.headers
    log = servers.c.log_text()
    assert "Traceback" not in log
    assert re.search(r"unhandled error", log) is None


def _serve(env: Mapping[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    base = {
        key: value
        for key, value in os.environ.items()
        if key not in APP_VARIABLES and not key.startswith("RIPPLE_")
    }
    return subprocess.run(
        [sys.executable, "-m", "app", "serve"],
        cwd=REPO_ROOT,
        env={**base, "PORT": str(free_port()), **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.mark.parametrize("with_database", [True, False])
def test_production_without_a_secret_key_refuses_to_start(
    database_url: str, tmp_path: Path, with_database: bool
) -> None:
    data_dir = tmp_path / "embedded"
    env = {"APP_ENV": "production", "SECRET_KEY": "", "RIPPLE_DATA_DIR": str(data_dir)}
    if with_database:
        env["DATABASE_URL"] = database_url
    started = time.monotonic()
    done = _serve(env)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "SECRET_KEY is not set" in done.stderr
    assert "APP_ENV=production" in done.stderr
    assert "Traceback" not in done.stderr
    assert not data_dir.exists()  # refused before starting anything, even a dev database
    assert time.monotonic() - started < 30
