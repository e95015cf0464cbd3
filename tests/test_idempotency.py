"""`Idempotency-Key` on the three writes, against the real server and the real database:
a repeat answers as the first committed answer did and writes nothing; in flight it is a 409;
a first attempt that committed nothing may be retried; a committed first attempt whose
answer never reached the client is not repeated by the retry."""

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Iterator

import asyncpg
import httpx
import pytest
import pytest_asyncio
from support import database
from support.pgbouncer import PgBouncer
from support.probes import eventually, online_ids
from support.server import AppServer
from support.sse import SSEClient
from support.visitors import Visitor

from app.services.feed import FEED_LOCK_KEY

pytestmark = pytest.mark.asyncio(loop_scope="module")
AppServerFactory = Callable[..., AppServer]

HTML = {"accept": "text/html", "hx-request": "true"}


@pytest.fixture(scope="module")
def server(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppServer]:
    """Two workers, so a repeat may well land on another worker than the first attempt."""
    app = AppServer(database_url, workers=2, log_dir=tmp_path_factory.mktemp("idempotency"))
    app.start()
    try:
        yield app
    finally:
        app.stop()


@pytest_asyncio.fixture(loop_scope="module")
async def visitor(server: AppServer) -> AsyncIterator[Visitor]:
    async with await Visitor.arrive(server.base_url) as arrived:
        yield arrived


class Notifications:
    """Every NOTIFY on the app's channel, heard on a LISTEN connection of the test's own."""

    def __init__(self, connection: asyncpg.Connection) -> None:
        self.connection = connection
        self.payloads: list[str] = []

    def heard(self, _conn: object, _pid: int, _channel: str, payload: object) -> None:
        self.payloads.append(str(payload))

    async def settled_count(self, payload: str) -> int:
        """How often `payload` was heard, once it was heard and a little more time passed."""
        await eventually(lambda: _value(self.payloads), lambda seen: payload in seen, 10)
        await asyncio.sleep(0.5)  # a duplicate, if any, would be sent right behind it
        return self.payloads.count(payload)


async def _value(payloads: list[str]) -> list[str]:
    return payloads


@pytest_asyncio.fixture(loop_scope="module")
async def notifications(database_url: str) -> AsyncIterator[Notifications]:
    connection = await database.connect(database_url)
    heard = Notifications(connection)
    await connection.add_listener("ripple", heard.heard)
    try:
        yield heard
    finally:
        await connection.close(timeout=5)


def _key() -> str:
    return f"k-{uuid.uuid4()}"


def _tag() -> str:
    return uuid.uuid4().hex[:12]


async def _post(
    visitor: Visitor, message: str, key: str | None, headers: dict[str, str] | None = None
) -> httpx.Response:
    sent = dict(headers or {})
    if key is not None:
        sent["idempotency-key"] = key
    return await visitor.client.post("/activity", data={"message": message}, headers=sent)


async def _rows(database_url: str, body: str) -> list[int]:
    rows = await database.fetch(database_url, "SELECT id FROM activity WHERE body = $1", body)
    return sorted(r["id"] for r in rows)


def _same_answer(first: httpx.Response, again: httpx.Response) -> None:
    assert again.status_code == first.status_code
    assert again.headers["content-type"] == first.headers["content-type"]
    assert again.content == first.content
    assert "idempotent-replayed" not in first.headers
    assert again.headers["idempotent-replayed"] == "true"


# -- the same key again ----------------------------------------------------------------------


async def test_post_twice_as_json_is_one_item_and_one_event(
    visitor: Visitor, notifications: Notifications, database_url: str
) -> None:
    message, key = f"json {_tag()}", _key()
    first = await _post(visitor, message, key)
    assert first.status_code == 201, first.text
    again = await _post(visitor, message, key)
    _same_answer(first, again)
    assert first.headers["content-type"].startswith("application/json")
    item_id = first.json()["id"]
    assert await _rows(database_url, message) == [item_id]
    assert await notifications.settled_count(f"activity:{item_id}") == 1


async def test_post_twice_as_html_fragment_is_one_item(
    visitor: Visitor, notifications: Notifications, database_url: str
) -> None:
    message, key = f"html {_tag()}", _key()
    first = await _post(visitor, message, key, HTML)
    assert first.status_code == 201, first.text
    again = await _post(visitor, message, key, HTML)
    _same_answer(first, again)
    assert first.headers["content-type"].startswith("text/html")
    [item_id] = await _rows(database_url, message)
    assert f'id="activity-{item_id}"' in again.text
    assert await notifications.settled_count(f"activity:{item_id}") == 1
    # The first answer's content type is kept even when the repeat asks for JSON.
    as_json = await _post(visitor, message, key)
    assert as_json.content == first.content
    assert as_json.headers["content-type"] == first.headers["content-type"]


async def test_increment_twice_adds_one(
    visitor: Visitor, notifications: Notifications, database_url: str
) -> None:
    # Other tests of this module never touch the counter: its value and events are ours.
    before = await database.fetchval(database_url, "SELECT value FROM counters WHERE id = 1")
    heard_before = notifications.payloads.count("counter:1")
    key, html_key = _key(), _key()
    first = await visitor.client.post("/counter/increment", headers={"idempotency-key": key})
    assert first.status_code == 200, first.text
    again = await visitor.client.post("/counter/increment", headers={"idempotency-key": key})
    _same_answer(first, again)
    assert first.json() == {"value": before + 1}
    headers = {**HTML, "idempotency-key": html_key}
    first_html = await visitor.client.post("/counter/increment", headers=headers)
    again_html = await visitor.client.post("/counter/increment", headers=headers)
    assert first_html.status_code == 200
    _same_answer(first_html, again_html)
    assert f'data-value="{before + 2}"' in first_html.text
    after = await database.fetchval(database_url, "SELECT value FROM counters WHERE id = 1")
    assert after == before + 2
    await eventually(
        lambda: _value(notifications.payloads),
        lambda seen: seen.count("counter:1") >= heard_before + 2,
        10,
    )
    await asyncio.sleep(0.5)
    assert notifications.payloads.count("counter:1") == heard_before + 2


async def test_rename_twice_is_one_rename_with_the_same_fragment(
    server: AppServer, visitor: Visitor, database_url: str
) -> None:
    stream = await SSEClient.connect(server.base_url, cookies=visitor.cookie_header(), timeout=10)
    try:
        visitor_id = visitor.cookies()["ripple_visitor"].split(".")[1]
        await eventually(lambda: online_ids(server.base_url), lambda ids: visitor_id in ids, 10)
        name, key = f"Ida {_tag()}", _key()
        headers = {**HTML, "idempotency-key": key}
        first = await visitor.client.post("/me", data={"name": name}, headers=headers)
        assert first.status_code == 200, first.text
        assert name in first.text  # read inside the write's transaction: the new name is there
        again = await visitor.client.post("/me", data={"name": name}, headers=headers)
        _same_answer(first, again)
    finally:
        await stream.aclose()
    renames = await database.fetchval(
        database_url,
        "SELECT count(*) FROM activity WHERE kind = 'renamed' AND author_name = $1",
        name,
    )
    assert renames == 1
    json_key = _key()
    other = f"Ivo {_tag()}"
    first_json = await visitor.client.post(
        "/me", data={"name": other}, headers={"idempotency-key": json_key}
    )
    again_json = await visitor.client.post(
        "/me", data={"name": other}, headers={"idempotency-key": json_key}
    )
    assert first_json.json() == {"name": other}
    _same_answer(first_json, again_json)


async def test_same_key_by_another_visitor_is_another_write(
    server: AppServer, visitor: Visitor, database_url: str
) -> None:
    message, key = f"shared key {_tag()}", _key()
    async with await Visitor.arrive(server.base_url) as other:
        mine = await _post(visitor, message, key)
        theirs = await _post(other, message, key)
    assert mine.status_code == theirs.status_code == 201
    assert "idempotent-replayed" not in theirs.headers
    assert mine.json()["id"] != theirs.json()["id"]
    assert await _rows(database_url, message) == sorted([mine.json()["id"], theirs.json()["id"]])


async def test_without_a_visitor_cookie_a_key_matches_nothing(
    visitor: Visitor, database_url: str
) -> None:
    message, key = f"no cookie {_tag()}", _key()
    answers = []
    for _ in range(2):
        visitor.client.cookies.delete("ripple_visitor")
        answers.append(await _post(visitor, message, key))
    assert [a.status_code for a in answers] == [201, 201]
    assert all("ripple_visitor=" in a.headers.get("set-cookie", "") for a in answers)
    assert len(await _rows(database_url, message)) == 2


async def test_a_key_used_by_another_action_is_refused(visitor: Visitor) -> None:
    key = _key()
    assert (await _post(visitor, f"first {_tag()}", key)).status_code == 201
    refused = await visitor.client.post(
        "/counter/increment", headers={"idempotency-key": key, "accept": "text/plain"}
    )
    assert refused.status_code == 422
    assert "different action" in refused.text


# -- keys that are not keys ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", "empty"),
        (b"x" * 65, "at most 64"),
        (b"two words", "visible ASCII"),
        (b"tab\there", "visible ASCII"),
        ("caf\u00e9".encode("latin-1"), "visible ASCII"),
        ("\u00e9t\u00e9".encode(), "visible ASCII"),
    ],
)
async def test_malformed_keys_are_422_with_a_reason_and_write_nothing(
    visitor: Visitor, database_url: str, raw: bytes, reason: str
) -> None:
    message = f"bad key {_tag()}"
    response = await visitor.client.post(
        "/activity",
        data={"message": message},
        headers=[(b"idempotency-key", raw), (b"accept", b"text/plain")],
    )
    assert response.status_code == 422
    assert reason in response.text
    assert await _rows(database_url, message) == []


async def test_the_longest_and_oddest_visible_keys_are_accepted(visitor: Visitor) -> None:
    for key in ("!" * 64, "~", '{"a":1}/<b>&c=d'):
        assert (await _post(visitor, f"odd key {_tag()}", key)).status_code == 201


async def test_two_keys_headers_are_refused(visitor: Visitor) -> None:
    response = await visitor.client.post(
        "/activity",
        data={"message": "two keys"},
        headers=[
            (b"idempotency-key", b"a"),
            (b"idempotency-key", b"b"),
            (b"accept", b"text/plain"),
        ],
    )
    assert response.status_code == 422
    assert "one Idempotency-Key" in response.text


# -- attempts that committed nothing, and keys that expired -----------------------------------


async def test_a_rejected_first_attempt_may_be_retried_with_the_same_key(
    visitor: Visitor, database_url: str
) -> None:
    key = _key()
    rejected = await _post(visitor, "   ", key)
    assert rejected.status_code == 422
    message = f"after a 422 {_tag()}"
    written = await _post(visitor, message, key)
    assert written.status_code == 201
    assert "idempotent-replayed" not in written.headers
    assert await _rows(database_url, message) == [written.json()["id"]]


async def test_an_expired_key_no_longer_replays(visitor: Visitor, database_url: str) -> None:
    message, key = f"expired {_tag()}", _key()
    first = await _post(visitor, message, key)
    await database.execute(
        database_url,
        "UPDATE idempotency_keys SET created_at = now() - interval '24 hours 1 second' "
        "WHERE key = $1",
        key,
    )
    again = await _post(visitor, message, key)
    assert again.status_code == 201
    assert "idempotent-replayed" not in again.headers
    assert again.json()["id"] != first.json()["id"]
    assert len(await _rows(database_url, message)) == 2
    # The new answer is the one replayed from now on.
    assert (await _post(visitor, message, key)).content == again.content


async def test_the_heartbeat_deletes_expired_records(visitor: Visitor, database_url: str) -> None:
    old, fresh = _key(), _key()
    await _post(visitor, f"old {_tag()}", old)
    await _post(visitor, f"fresh {_tag()}", fresh)
    await database.execute(
        database_url,
        "UPDATE idempotency_keys SET created_at = now() - interval '25 hours' WHERE key = $1",
        old,
    )

    async def keys() -> set[str]:
        rows = await database.fetch(
            database_url, "SELECT key FROM idempotency_keys WHERE key = ANY($1)", [old, fresh]
        )
        return {r["key"] for r in rows}

    assert await eventually(keys, lambda found: old not in found, 10) == {fresh}


async def test_a_429_first_attempt_may_be_retried_and_a_replay_is_not_counted(
    app_server: AppServerFactory, database_url: str
) -> None:
    limited = await asyncio.to_thread(app_server, env={"RATE_LIMIT_PER_MINUTE": "2"}, workers=1)
    async with await Visitor.arrive(limited.base_url) as visitor:
        visitor_id = visitor.cookies()["ripple_visitor"].split(".")[1]
        first_key, late_key = _key(), _key()
        first = await _post(visitor, f"one {_tag()}", first_key)
        assert (await _post(visitor, f"two {_tag()}", _key())).status_code == 201
        late_message = f"three {_tag()}"
        refused = await _post(visitor, late_message, late_key)
        assert refused.status_code == 429
        assert await _rows(database_url, late_message) == []

        async def hits() -> int:
            value = await database.fetchval(
                database_url,
                "SELECT sum(hits) FROM rate_buckets WHERE key = $1",
                f"v:{visitor_id}:write",
            )
            return int(value or 0)

        counted = await hits()
        replayed = await _post(visitor, "ignored", first_key)
        _same_answer(first, replayed)
        assert await hits() == counted  # a replay is no rate-limit hit

        # The window passes (its bucket is gone): the refused attempt is retried, and writes.
        await database.execute(
            database_url, "DELETE FROM rate_buckets WHERE key LIKE $1", f"%{visitor_id}%"
        )
        await database.execute(database_url, "DELETE FROM rate_buckets WHERE key LIKE 'ip:%'")
        retried = await _post(visitor, late_message, late_key)
        assert retried.status_code == 201, retried.text
        assert await _rows(database_url, late_message) == [retried.json()["id"]]


# -- in flight, and committed after the client gave up ----------------------------------------


async def _feed_lock(database_url: str) -> asyncpg.Connection:
    """A connection holding the feed's advisory lock: every post waits inside its statement."""
    holder = await database.connect(database_url)
    await holder.execute("SELECT pg_advisory_lock($1)", FEED_LOCK_KEY)
    return holder


async def _app_waits_for_a_lock(database_url: str) -> None:
    """Some app backend is blocked on a lock (the first attempt is in flight, for real)."""
    query = (
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND application_name = 'ripple' AND wait_event_type = 'Lock'"
    )
    await eventually(lambda: database.fetchval(database_url, query), lambda n: n >= 1, 10)


async def test_a_repeat_while_the_first_is_in_flight_is_409(
    visitor: Visitor, database_url: str
) -> None:
    message, key = f"in flight {_tag()}", _key()
    holder = await _feed_lock(database_url)
    try:
        first = asyncio.create_task(_post(visitor, message, key))
        await _app_waits_for_a_lock(database_url)
        repeat = await _post(visitor, message, key, {"accept": "text/plain"})
        assert repeat.status_code == 409
        assert repeat.headers["retry-after"] == "1"
        assert "still being processed" in repeat.text
        as_json = await _post(visitor, message, key)
        assert as_json.status_code == 409
        assert "still being processed" in as_json.json()["detail"]
        assert not first.done()
    finally:
        await holder.close(timeout=5)  # releases the lock
    answered = await asyncio.wait_for(first, 10)
    assert answered.status_code == 201
    _same_answer(answered, await _post(visitor, message, key))
    assert await _rows(database_url, message) == [answered.json()["id"]]


async def test_a_first_attempt_committed_after_the_client_timed_out_is_not_repeated(
    visitor: Visitor, notifications: Notifications, database_url: str
) -> None:
    """The fault found: the first attempt's answer is lost (the client gave up while the
    database held it), the write commits afterwards, and the person retries."""
    message, key = f"timed out {_tag()}", _key()
    blocker = await database.connect(database_url)
    transaction = blocker.transaction()
    await transaction.start()
    await blocker.execute("LOCK TABLE activity IN ACCESS EXCLUSIVE MODE")
    try:
        with pytest.raises(httpx.ReadTimeout):
            await visitor.client.post(
                "/activity",
                data={"message": message},
                headers={"idempotency-key": key},
                timeout=httpx.Timeout(10, read=1.5),
            )
        await _app_waits_for_a_lock(database_url)  # still in flight on the server
    finally:
        await transaction.rollback()  # the link is back: the first attempt commits
        await blocker.close(timeout=5)

    async def retry() -> httpx.Response:
        return await _post(visitor, message, key)

    answer = await eventually(retry, lambda r: r.status_code != 409, 10, interval=0.3)
    assert answer.status_code == 201, answer.text
    assert answer.headers["idempotent-replayed"] == "true"
    [item_id] = await _rows(database_url, message)
    assert answer.json() == {"id": item_id}
    assert await notifications.settled_count(f"activity:{item_id}") == 1


async def test_writes_without_a_key_are_not_recorded(visitor: Visitor, database_url: str) -> None:
    before = await database.fetchval(database_url, "SELECT count(*) FROM idempotency_keys")
    message = f"no key {_tag()}"
    assert (await _post(visitor, message, None)).status_code == 201
    assert (await _post(visitor, message, None)).status_code == 201
    assert len(await _rows(database_url, message)) == 2
    after = await database.fetchval(database_url, "SELECT count(*) FROM idempotency_keys")
    assert after == before


async def test_keyed_writes_through_a_transaction_pooler(
    app_server: AppServerFactory, database_url: str, pgbouncer: Callable[..., PgBouncer]
) -> None:
    """Each keyed write is one transaction on one connection (its rate-limit count included),
    so 40 at once through 3 server connections neither starve nor trip on prepared
    statements; every key sent twice at once still writes once."""
    bouncer = await asyncio.to_thread(pgbouncer, default_pool_size=3)
    pooled = bouncer.url_for(database.database_name(database_url))
    env = {"DATABASE_URL_UNPOOLED": database_url, "RATE_LIMIT_PER_MINUTE": "1000"}
    server = await asyncio.to_thread(app_server, env, database_url=pooled, workers=2)
    tag = _tag()
    keys = [_key() for _ in range(20)]
    async with await Visitor.arrive(server.base_url) as visitor:
        twice = await asyncio.gather(
            *(_post(visitor, f"pooled {tag} {n}", keys[n]) for n in range(20) for _ in range(2))
        )
        assert {r.status_code for r in twice} <= {201, 409}, [r.text for r in twice]
        for n in range(20):
            assert len(await _rows(database_url, f"pooled {tag} {n}")) == 1
        for n, key in enumerate(keys):
            first = next(r for r in twice[2 * n : 2 * n + 2] if r.status_code == 201)
            again = await _post(visitor, "ignored", key)
            assert again.status_code == 201
            assert again.content == first.content
