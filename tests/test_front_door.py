"""The front door, against a real server: every response kind carries the security headers,
HEAD works on every GET route, item URLs are canonical, the client address comes from the
right X-Forwarded-For entry, /metrics is guarded, and no error body names the machine.

One instance (one worker, so per-worker caps are exact) serves this module.
"""

import asyncio
import re
from collections.abc import Callable, Iterator

import httpx
import pytest
from support import database
from support.probes import metric
from support.server import AppServer
from support.sse import SSEClient
from support.visitors import Visitor

TOKEN = "metrics-test-token"
SECURITY = {
    "content-security-policy",
    "x-content-type-options",
    "referrer-policy",
    "x-frame-options",
}
# Two proxies in front (PROXY_HOPS=2): the client's entry is the second from the right.
PROXY = "10.9.9.9"


def via_proxies(client_ip: str, spoofed: str = "203.0.113.66") -> dict[str, str]:
    """Headers as two proxies would leave them: what the client wrote, what the outer proxy
    saw (the client), what the inner proxy saw (the outer proxy)."""
    return {"x-forwarded-for": f"{spoofed}, {client_ip}, {PROXY}"}


@pytest.fixture(scope="module")
def door(tmp_path_factory: pytest.TempPathFactory, admin_url: str) -> Iterator[AppServer]:
    url = asyncio.run(database.create_database(admin_url))
    server = None
    try:
        database.migrate(url)
        server = AppServer(
            url,
            {
                "FORWARDED_ALLOW_IPS": "*",
                "PROXY_HOPS": "2",
                "RATE_LIMIT_PER_MINUTE": "4",  # per client address: 4 x 5 = 20 posts a minute
                "MAX_STREAMS_PER_CLIENT": "2",
                "MAX_STREAMS_PER_WORKER": "4",
                "METRICS_TOKEN": TOKEN,
            },
            workers=1,
            log_dir=tmp_path_factory.mktemp("door"),
        ).start()
        yield server
    finally:
        if server is not None:
            server.stop()
        asyncio.run(database.drop_database(url, admin_url))


def assert_secured(response_headers: httpx.Headers | dict[str, str], what: str) -> None:
    names = {name.lower() for name in response_headers}
    missing = SECURITY - names
    assert not missing, f"{what} lacks {sorted(missing)}"


async def test_every_response_kind_carries_the_security_headers(door: AppServer) -> None:
    base = door.base_url
    seen: dict[str, int] = {}

    def check(kind: str, response: httpx.Response, status: int) -> None:
        assert response.status_code == status, f"{kind}: {response.status_code} {response.text}"
        assert_secured(response.headers, kind)
        seen[kind] = status

    async with await Visitor.arrive(base, json=False, headers=via_proxies("198.51.100.1")) as ann:
        posted = await ann.post("front door")
        check("item (POST answer)", posted, 201)
        item = re.search(r'data-id="(\d+)"', posted.text)
        assert item
        item_id = item.group(1)
        check("page", await ann.get("/"), 200)
        check("state fragment", await ann.get("/fragments/counter"), 200)
        check("feed list", await ann.get("/fragments/activity?after=0"), 200)
        check("item", await ann.get(f"/fragments/activity/{item_id}"), 200)
        check("item again (from memory)", await ann.get(f"/fragments/activity/{item_id}"), 200)
        check(
            "json",
            await ann.get("/fragments/presence", headers={"accept": "application/json"}),
            200,
        )
        check("static", await ann.get("/static/app.css"), 200)
        check("healthz", await ann.get("/healthz"), 200)
        check("404", await ann.get("/no/such/page"), 404)
        check("404 item", await ann.get("/fragments/activity/999999999"), 404)
        check("405", await ann.client.delete("/fragments/counter"), 405)
        check("413", await ann.client.post("/activity", content=b"m" * 40_000), 413)
        check("422", await ann.post("   "), 422)
        check("401 metrics", await ann.get("/metrics"), 401)
        check("400 cursor", await ann.get("/fragments/activity?after=x"), 400)
        forged = await ann.client.post(
            "/activity", data={"message": "x"}, headers={"x-csrftoken": "forged"}
        )
        check("403 csrf", forged, 403)
        for attempt in range(30):  # the address's allowance runs out
            answer = await ann.post(f"flood {attempt}")
            if answer.status_code == 429:
                break
        check("429", answer, 429)

    # The stream, its 429 (per-client cap) and 503 (worker full), all from the front door.
    async with SSEClient.open(base, headers=via_proxies("198.51.100.2")) as one:
        assert one.status == 200
        assert_secured(one.headers, "stream")
        seen["stream"] = 200
        async with SSEClient.open(base, headers=via_proxies("198.51.100.2")) as two:
            assert two.status == 200
            async with SSEClient.open(base, headers=via_proxies("198.51.100.2")) as three:
                assert three.status == 429, "a third stream of one client address"
                assert_secured(three.headers, "stream 429")
                seen["stream 429"] = 429
            async with (
                SSEClient.open(base, headers=via_proxies("198.51.100.3")) as four,
                SSEClient.open(base, headers=via_proxies("198.51.100.4")) as five,
            ):
                assert four.status == 200
                assert five.status == 200
                async with SSEClient.open(base, headers=via_proxies("198.51.100.5")) as full:
                    assert full.status == 503, "a fifth stream on a worker that takes four"
                    assert "retry-after" in full.headers
                    assert_secured(full.headers, "stream 503")
                    seen["stream 503"] = 503
    assert len(seen) >= 20


async def test_a_database_outage_answers_503_with_the_security_headers(
    app_server: Callable[..., AppServer], admin_url: str
) -> None:
    """The 503 kind: a worker whose database went away (dropped under it for real)."""
    url = await database.create_database(admin_url)
    await asyncio.to_thread(database.migrate, url)
    server = await asyncio.to_thread(app_server, workers=1, database_url=url)
    async with await Visitor.arrive(server.base_url) as ann:
        await database.drop_database(url, admin_url)  # terminates its connections too
        answer = await ann.get("/fragments/counter")
        assert answer.status_code == 503, answer.text
        assert "retry-after" in answer.headers
        assert_secured(answer.headers, "503")
        # Every fault shows in /metrics (which needs no database).
        assert await metric(server.base_url, "ripple_database_unavailable_total") >= 1


async def test_head_answers_every_get_route_without_a_body(door: AppServer) -> None:
    async with await Visitor.arrive(door.base_url, json=False) as ann:
        posted = await ann.post("head")
        found = re.search(r'data-id="(\d+)"', posted.text)
        assert found
        routes = [
            "/",
            "/fragments/counter",
            "/fragments/presence",
            "/fragments/activity",
            "/fragments/activity?after=0",
            f"/fragments/activity/{found.group(1)}",
            "/static/js/main.js",
            "/healthz",
        ]
        for path in routes:
            got = await ann.get(path)
            head = await ann.client.head(path)
            assert head.status_code == got.status_code == 200, path
            assert head.content == b"", path
            assert head.headers["content-type"] == got.headers["content-type"], path
            assert_secured(head.headers, f"HEAD {path}")
        head = await ann.client.head("/metrics", headers={"authorization": f"Bearer {TOKEN}"})
        assert head.status_code == 200
        assert head.content == b""
    # The stream answers HEAD with its headers and ends at once.
    async with httpx.AsyncClient(base_url=door.base_url, timeout=5) as client:
        head = await client.head("/events")
        assert head.status_code == 200
        assert head.headers["content-type"].startswith("text/event-stream")
        assert_secured(head.headers, "HEAD /events")


async def test_the_client_address_is_never_one_the_client_wrote(door: AppServer) -> None:
    """200 posts from one client, each with another made-up leftmost X-Forwarded-For entry
    (and each from a fresh identity, so only the address's allowance can stop them)."""
    client_ip = "198.51.100.77"
    accepted = refused = 0
    async with httpx.AsyncClient(base_url=door.base_url, timeout=10) as client:
        for attempt in range(200):
            client.cookies.clear()
            page = await client.get("/", headers=via_proxies(client_ip, f"192.0.2.{attempt % 250}"))
            token = page.cookies["csrftoken"]
            for _try in range(5):  # a loaded machine may answer 503 (pool wait): try again
                answer = await client.post(
                    "/activity",
                    data={"message": f"spoof {attempt}"},
                    headers={
                        **via_proxies(client_ip, f"203.0.113.{attempt % 250}"),
                        "x-csrftoken": token,
                        "accept": "application/json",
                    },
                )
                if answer.status_code != 503:
                    break
                await asyncio.sleep(1)
            assert answer.status_code in {201, 429}, answer.text
            accepted += answer.status_code == 201
            refused += answer.status_code == 429
    # The address allows 4 x 5 posts a minute, in fixed windows: a run that crosses a
    # minute boundary gets a second allowance, so count per window the database kept.
    windows = await database.fetch(
        door.env["DATABASE_URL"],
        "SELECT hits FROM rate_buckets WHERE key = $1",
        f"ip:{client_ip}:write",
    )
    assert windows, "the client's address was never counted"
    assert accepted == sum(min(row["hits"], 20) for row in windows)
    assert accepted + refused == 200
    assert refused >= 200 - 20 * len(windows) >= 160
    rows = await database.fetch(door.env["DATABASE_URL"], "SELECT key FROM rate_buckets")
    keys = {row["key"] for row in rows}
    assert not any(key.startswith(("ip:192.0.2.", "ip:203.0.113.")) for key in keys)
