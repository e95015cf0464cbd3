"""Request-level behaviour, in process (``support.inprocess``): the served app, its front
door included, on the real PostgreSQL, without a server process. What needs the server
(proxy headers, HEAD body handling, header limits, streams) is in test_front_door.py and
test_edge_limits.py."""

import asyncio
import re
import uuid
from collections.abc import AsyncIterator

import pytest
from litestar.testing import AsyncTestClient
from support import database
from support.inprocess import csrf_headers, in_process
from support.paths import REPO_ROOT

from app.web import csrf
from app.web.frontdoor import FrontDoor

TOKEN = "in-process-metrics-token"
Client = AsyncTestClient[FrontDoor]


@pytest.fixture
async def client(database_url: str) -> AsyncIterator[Client]:
    async with in_process(database_url, {"METRICS_TOKEN": TOKEN}) as client:
        await client.get("/")  # the identity and csrftoken cookies
        yield client


async def _post(client: Client, message: str) -> int:
    answer = await client.post(
        "/activity",
        data={"message": message},
        headers={**csrf_headers(client), "accept": "application/json"},
    )
    assert answer.status_code == 201, answer.text
    return int(answer.json()["id"])


async def test_item_urls_are_canonical(client: Client) -> None:
    item_id = await _post(client, "canonical")
    assert (await client.get(f"/fragments/activity/{item_id}")).status_code == 200
    digits = str(item_id)
    # Twice: the second round is answered by the front door's rendered-item path.
    for _ in range(2):
        for alias in [
            f"+{digits}",
            f"0{digits}",
            f"{digits}_" if len(digits) == 1 else f"{digits[0]}_{digits[1:]}",
            digits.translate({ord("0") + d: 0x0660 + d for d in range(10)}),  # Arabic-Indic
            digits.translate({ord("0") + d: 0xFF10 + d for d in range(10)}),  # fullwidth
            "0",
            "-1",
            "9" * 25,
        ]:
            answer = await client.get(f"/fragments/activity/{alias}")
            assert answer.status_code == 404, (alias, answer.status_code)
            assert "etag" not in answer.headers
            assert answer.headers["cache-control"] == "no-store"


async def test_metrics_need_the_token(client: Client) -> None:
    assert (await client.get("/metrics")).status_code == 401
    wrong = await client.get("/metrics", headers={"authorization": "Bearer nope"})
    assert wrong.status_code == 401
    assert wrong.headers["www-authenticate"].startswith("Bearer")
    odd = await client.get("/metrics", headers=[(b"authorization", "Bearer é".encode())])
    assert odd.status_code == 401
    right = await client.get("/metrics", headers={"authorization": f"Bearer {TOKEN}"})
    assert right.status_code == 200
    assert "ripple_open_streams" in right.text


async def test_production_without_a_token_has_no_metrics(database_url: str) -> None:
    env = {"APP_ENV": "production", "SECRET_KEY": "p" * 40}
    async with in_process(database_url, env) as client:
        answer = await client.get("/metrics")
        assert answer.status_code == 404
        assert "strict-transport-security" in answer.headers


async def test_no_error_body_names_the_machine(client: Client) -> None:
    root = str(REPO_ROOT)
    for path in [
        "/static/vendor",
        "/static/vendor/",
        "/static/%2e%2e/pyproject.toml",
        "/static/nope.js",
        "/fragments/activity/x",
        "/no/such/page",
    ]:
        for accept in ["text/html", "application/json"]:
            answer = await client.get(path, headers={"accept": accept})
            assert answer.status_code in {400, 404}, (path, answer.status_code)
            assert root not in answer.text, (path, answer.text)
            assert len(answer.text) < 120, (path, answer.text)
    health = await client.get("/healthz")
    assert "instance" not in health.json()


def _plant(client: Client, value: str) -> None:
    """Replace the csrftoken cookie as a sibling subdomain or an old deploy would have."""
    client.cookies.delete("csrftoken")
    client.cookies.set("csrftoken", value, domain="testserver.local", path="/")


async def test_an_unsigned_csrf_cookie_is_replaced_by_the_next_page_or_state_get(
    client: Client,
) -> None:
    item_id = await _post(client, "an item to fetch")
    sibling = csrf.new_token(b"a sibling subdomain's key" * 2)
    good = client.cookies["csrftoken"]
    for planted in [sibling, "junk", good + "x"]:
        _plant(client, planted)
        refused = await client.post(
            "/activity", data={"message": "x"}, headers={"x-csrftoken": planted}
        )
        assert refused.status_code == 403, refused.text
        _plant(client, planted)
        item = await client.get(f"/fragments/activity/{item_id}")
        assert item.status_code == 200
        assert "set-cookie" not in item.headers  # cacheable: never a cookie
        state = await client.get("/fragments/counter")
        assert "csrftoken=" in state.headers.get("set-cookie", "")
        assert client.cookies["csrftoken"] != planted
        await _post(client, "recovered")
        _plant(client, planted)
        page = await client.get("/")
        assert "csrftoken=" in page.headers.get("set-cookie", "")
        assert client.cookies["csrftoken"] != planted
    kept = client.cookies["csrftoken"]
    again = await client.get("/fragments/presence")
    assert "set-cookie" not in again.headers  # a valid cookie is kept (other tabs hold it)
    assert client.cookies["csrftoken"] == kept


async def test_a_plain_form_post_may_carry_the_token_in_a_hidden_field(client: Client) -> None:
    page = await client.get("/")
    token = client.cookies["csrftoken"]
    found = re.findall(r'name="csrf_token" value="([^"]*)"', page.text)
    assert found
    assert set(found) == {token}
    accepted = await client.post("/activity", data={"message": "no script", "csrf_token": token})
    assert accepted.status_code in {201, 303}, accepted.text
    for wrong in ["", "x", token + "x", "é"]:
        refused = await client.post("/activity", data={"message": "forged", "csrf_token": wrong})
        assert refused.status_code == 403, (wrong, refused.text)


async def test_concurrent_renames_to_one_name_have_one_winner(database_url: str) -> None:
    async with (
        in_process(database_url) as a,
        in_process(database_url) as b,
        in_process(database_url) as c,
    ):
        people = [a, b, c]
        for person in people:
            await person.get("/")
        for round_ in range(5):
            name = f"Only One {round_} {id(people) % 10_000}"
            spellings = [name, name.upper(), name.lower()]
            answers = await asyncio.gather(
                *(
                    p.post(
                        "/me",
                        data={"name": s},
                        headers={**csrf_headers(p), "accept": "application/json"},
                    )
                    for p, s in zip(people, spellings, strict=True)
                )
            )
            statuses = sorted(answer.status_code for answer in answers)
            assert statuses == [200, 422, 422], [answer.text for answer in answers]


async def test_a_repeated_plain_form_post_with_a_key_redirects_again_and_writes_once(
    client: Client, database_url: str
) -> None:
    token = client.cookies["csrftoken"]
    message = f"keyed plain post {uuid.uuid4().hex[:8]}"
    answers = [
        await client.post(
            "/activity",
            data={"message": message, "csrf_token": token},
            headers={"accept": "text/html", "idempotency-key": "plain-form-key-1"},
            follow_redirects=False,
        )
        for _ in range(2)
    ]
    assert [a.status_code for a in answers] == [303, 303]
    assert [a.headers["location"] for a in answers] == ["/", "/"]
    assert answers[1].headers["idempotent-replayed"] == "true"
    rows = await database.fetchval(
        database_url, "SELECT count(*) FROM activity WHERE body = $1", message
    )
    assert rows == 1
