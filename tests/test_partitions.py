"""Network partitions caused for real: an instance's link to PostgreSQL is cut (bytes held,
connections neither closed nor refused) by a holding TCP proxy while another instance keeps
writing on a direct link.

Killing or freezing a process makes the kernel refuse or reset; a partition answers nothing, so
only the app's own timeouts can bound a request. These tests check the bounds the contract
promises (503 with Retry-After within 10 s, /healthz within 2 s) and that everything recovers
after the heal, and print what they measured (run with ``-s`` to see it).
"""

import asyncio
import contextlib
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession
from support.probes import online_ids
from support.server import AppServer
from support.sse import SSEClient
from support.tcpproxy import HoldingProxy
from support.visitors import Visitor

from app.config import ConfigError, Settings
from app.db import Database, connect_args, create_engine, open_database

AppServerFactory = Callable[..., AppServer]
T = TypeVar("T")

CUT_SECONDS = 25.0
ANSWER_WITHIN = 10.0  # the contract: a request needing the database answers within 10 s
HEALTH_WITHIN = 2.0  # the contract: /healthz answers within 2 s
RECOVER_WITHIN = 10.0  # after the heal: streams caught up, /healthz 200, writes work
MANY = {"MAX_STREAMS_PER_CLIENT": "0"}  # every test client connects from 127.0.0.1


def through(url: str, proxy: HoldingProxy) -> str:
    """``url`` with its host and port replaced by the proxy's."""
    parts = urlsplit(url)
    user = f"{parts.username}@" if parts.username else ""
    return parts._replace(netloc=f"{user}{proxy.host}:{proxy.port}").geturl()


@pytest.fixture
def db_link(database_url: str) -> Iterator[HoldingProxy]:
    """A cuttable link to the test database's server."""
    parts = urlsplit(database_url)
    with HoldingProxy(parts.hostname or "127.0.0.1", parts.port or 5432) as proxy:
        yield proxy


@dataclass
class Answer:
    """One HTTP answer during the cut, and how long it took."""

    what: str
    seconds: float
    status: int
    retry_after: str | None
    body: str


async def timed(what: str, request: Awaitable[httpx.Response]) -> Answer:
    started = time.monotonic()
    response = await request
    return Answer(
        what,
        time.monotonic() - started,
        response.status_code,
        response.headers.get("retry-after"),
        response.text,
    )


async def open_stream_during_cut(base_url: str, cursor: int) -> Answer:
    """A stream that asks for a replay (its query needs the database) while it is cut off."""
    started = time.monotonic()
    stream = await SSEClient.connect(
        base_url, headers={"last-event-id": str(cursor)}, timeout=ANSWER_WITHIN + 5
    )
    try:
        seconds = time.monotonic() - started
        body = "" if stream.status == 200 else (await stream.read_body(5)).decode()
        return Answer(
            "stream open", seconds, stream.status, stream.headers.get("retry-after"), body
        )
    finally:
        await stream.aclose()


def assert_refused_in_time(answer: Answer) -> None:
    assert answer.status == 503, answer
    assert answer.retry_after is not None, answer
    assert answer.retry_after.isdigit(), answer
    assert answer.seconds < ANSWER_WITHIN, answer
    assert answer.body.strip(), answer
    assert "Traceback" not in answer.body, answer


@dataclass
class HealthWatch:
    """/healthz polled all along: every answer's status and duration."""

    base_url: str
    samples: list[tuple[float, int, float]] = field(default_factory=list)  # (at, status, took)
    failures: list[str] = field(default_factory=list)

    async def run(self) -> None:
        async with httpx.AsyncClient(base_url=self.base_url, timeout=HEALTH_WITHIN + 8) as client:
            while True:
                started = time.monotonic()
                try:
                    response = await client.get("/healthz")
                except httpx.HTTPError as exc:
                    self.failures.append(repr(exc))
                else:
                    took = time.monotonic() - started
                    self.samples.append((started, response.status_code, took))
                await asyncio.sleep(0.25)

    def first(self, status: int, since: float) -> float | None:
        """Seconds from ``since`` until the first answer with ``status`` asked after it."""
        for at, got, took in self.samples:
            if at >= since and got == status:
                return at + took - since
        return None

    def slowest(self, since: float, until: float) -> float:
        return max((took for at, _, took in self.samples if since <= at < until), default=0.0)


async def keep_writing(base_url: str, written: list[int], stop: asyncio.Event) -> None:
    """Post on the instance with the direct link, every 0.5 s, until told to stop."""
    async with await Visitor.arrive(base_url) as writer:
        n = 0
        while not stop.is_set():
            n += 1
            response = await writer.post(f"written during the cut {n}")
            assert response.status_code == 201, response.text
            written.append(response.json()["id"])
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)


async def eventually_ok(attempt: Callable[[], Awaitable[T | None]], timeout: float) -> T:
    """Retry ``attempt`` until it returns something; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = await attempt()
        if result is not None:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {timeout} s")
        await asyncio.sleep(0.2)


def caught_up(stream: SSEClient, since: int, missed: list[int]) -> bool:
    """Every missed item arrived as an ``activity`` event, or a ``resync`` said to re-read."""
    later = stream.events[since:]
    if any(ev.event == "resync" for ev in later):
        return True
    seen = {ev.data for ev in later if ev.event == "activity"}
    return all(str(item) in seen for item in missed)


@pytest.fixture
async def streams_to_close() -> AsyncIterator[list[SSEClient]]:
    streams: list[SSEClient] = []
    try:
        yield streams
    finally:
        await asyncio.gather(*(s.aclose() for s in streams), return_exceptions=True)


def test_database_timeouts_have_the_documented_defaults_and_reach_the_engine() -> None:
    settings = Settings.from_env({"DATABASE_URL": "postgresql://app@db.example:5432/app"})
    assert settings.db_connect_timeout_seconds == 5.0
    assert settings.db_statement_timeout_seconds == 5.0
    assert settings.db_pool_timeout_seconds == 3.0
    assert settings.listener_check_timeout_seconds == 2.0
    assert settings.stream_silence_seconds == 35.0
    # Within the contract's 10 s: one pool wait, then one connect or one statement.
    assert (
        settings.db_pool_timeout_seconds
        + max(settings.db_connect_timeout_seconds, settings.db_statement_timeout_seconds)
        < ANSWER_WITHIN
    )

    engine = create_engine(settings)
    assert engine.pool.timeout() == 3.0  # type: ignore[attr-defined]
    # Migrations (alembic/env.py) call connect_args without timeouts: none are set for them.
    assert "command_timeout" not in connect_args(settings.database, pooled=False)
    args = connect_args(settings.database, pooled=False, connect_timeout=1, statement_timeout=2)
    assert (args["timeout"], args["command_timeout"]) == (1, 2)

    with pytest.raises(ConfigError, match="RIPPLE_DB_STATEMENT_TIMEOUT_SECONDS"):
        Settings.from_env(
            {"DATABASE_URL": "postgresql://h/db", "RIPPLE_DB_STATEMENT_TIMEOUT_SECONDS": "0"}
        )


async def _scalar(db: Database, sql: str) -> object:
    async with db.transaction() as session:
        return await session.scalar(text(sql))


async def driver_connection(session: AsyncSession) -> Any:
    """The asyncpg connection under a session's current transaction."""
    connection = await session.connection()
    raw = await connection.get_raw_connection()
    return raw.driver_connection


async def test_a_statement_cut_off_fails_after_its_timeout_and_its_connection_is_discarded(
    db_link: HoldingProxy, database_url: str
) -> None:
    """asyncpg answers a statement timeout with a cancel request over a new connection, and
    makes the next statement (the ROLLBACK) wait for it; across a partition that connection
    hangs too. The engine must fail the statement after one timeout and drop the connection
    instead of handing it out again."""
    timeout = 2.0
    settings = Settings.from_env(
        {
            "DATABASE_URL": through(database_url, db_link),
            "RIPPLE_DB_STATEMENT_TIMEOUT_SECONDS": str(timeout),
            "RIPPLE_DB_CONNECT_TIMEOUT_SECONDS": str(timeout),
        }
    )
    db = open_database(settings)
    try:
        async with db.transaction() as session:
            assert await session.scalar(text("SELECT 1")) == 1
            first = await driver_connection(session)
        await asyncio.to_thread(db_link.cut)

        started = time.monotonic()
        with pytest.raises(TimeoutError):
            async with db.transaction() as session:
                await session.scalar(text("SELECT 2"))
        took = time.monotonic() - started
        # Not twice the timeout (the ROLLBACK waiting for the cancel request), nor forever.
        assert took < 1.75 * timeout, took
        assert first.is_closed()

        started = time.monotonic()
        with pytest.raises(TimeoutError):
            async with db.transaction() as session:
                await session.scalar(text("SELECT 3"))  # needs a new connection: it hangs
        took = time.monotonic() - started
        assert took < 1.75 * timeout, took

        await asyncio.to_thread(db_link.heal)
        async with db.transaction() as session:
            assert await session.scalar(text("SELECT 4")) == 4
            second = await driver_connection(session)
            assert second is not first

        # A task cancelled while its statement hangs (asyncio.wait_for around a read) gets
        # its cancellation at once, not after a goodbye that waits for the cancel request.
        await asyncio.to_thread(db_link.cut)
        read = asyncio.create_task(_scalar(db, "SELECT 5"))
        await asyncio.sleep(0.5)
        started = time.monotonic()
        read.cancel()
        await asyncio.wait([read], timeout=10)
        took = time.monotonic() - started
        assert read.cancelled()
        assert took < 1.0, took
        assert second.is_closed()
    finally:
        await asyncio.to_thread(db_link.heal)
        await asyncio.wait_for(db.dispose(), 10)


@pytest.mark.slow
async def test_an_instance_cut_off_from_postgres_answers_503_in_time_and_recovers(
    db_link: HoldingProxy,  # first: the link outlives the instances (a clean shutdown)
    app_server: AppServerFactory,
    database_url: str,
    streams_to_close: list[SSEClient],
) -> None:
    via_link = through(database_url, db_link)
    cut_off = await asyncio.to_thread(
        app_server,
        {"DATABASE_URL_UNPOOLED": via_link, **MANY},
        database_url=via_link,
        workers=2,
    )
    direct = await asyncio.to_thread(app_server, MANY, workers=1)

    visitor = await Visitor.arrive(cut_off.base_url, timeout=ANSWER_WITHIN + 10)
    latecomer = await Visitor.arrive(cut_off.base_url)  # first seen by a stream in the cut
    reader = await Visitor.arrive(cut_off.base_url, json=False, timeout=ANSWER_WITHIN + 10)
    health = HealthWatch(cut_off.base_url)
    watching = asyncio.create_task(health.run())
    stop_writing = asyncio.Event()
    written: list[int] = []
    writing: asyncio.Task[None] | None = None
    try:
        cursor = (await visitor.post("before the cut")).json()["id"]
        streams = streams_to_close
        for _ in range(4):
            streams.append(
                await SSEClient.connect(
                    cut_off.base_url,
                    headers={"last-event-id": str(cursor)},
                    cookies=visitor.cookie_header(),
                )
            )
        control = await SSEClient.connect(direct.base_url)
        streams.append(control)
        assert all(s.status == 200 for s in streams)
        await asyncio.gather(*(s.wait_for_event("ping") for s in streams))
        visitor_id = visitor.cookies()["ripple_visitor"].split(".")[1]

        # -- the cut ---------------------------------------------------------------------
        await asyncio.to_thread(db_link.cut)
        cut_at = time.monotonic()
        at_cut = [len(s.events) for s in streams]
        writing = asyncio.create_task(keep_writing(direct.base_url, written, stop_writing))

        async def probe_round() -> list[Answer]:
            return list(
                await asyncio.gather(
                    timed("write", visitor.post("while cut off")),
                    timed(
                        "read fragment",
                        reader.get(
                            f"/fragments/activity?after={cursor}", headers={"hx-request": "true"}
                        ),
                    ),
                    timed("counter fragment", reader.get("/fragments/counter")),
                    timed("page", reader.get("/")),
                    open_stream_during_cut(cut_off.base_url, cursor),
                )
            )

        # First with the pooled connections still open (a statement times out), then later
        # when they have been discarded (a new connection times out).
        # A stream without a cursor needs no replay: it opens, and the visitor's join (which
        # cannot be written now) is written after the heal.
        started = time.monotonic()
        late_stream = await SSEClient.connect(
            cut_off.base_url, cookies=latecomer.cookie_header(), timeout=ANSWER_WITHIN + 5
        )
        streams.append(late_stream)
        late_stream_opened = time.monotonic() - started
        assert late_stream.status == 200
        late_id = latecomer.cookies()["ripple_visitor"].split(".")[1]

        first_round = await probe_round()
        await asyncio.sleep(max(0.0, 13.0 - (time.monotonic() - cut_at)))
        second_round = await probe_round()
        await asyncio.sleep(max(0.0, CUT_SECONDS - (time.monotonic() - cut_at)))
        pings_during_cut = [
            sum(1 for ev in s.events[start:] if ev.event == "ping")
            for s, start in zip(streams[:5], at_cut, strict=True)
        ]

        # -- the heal --------------------------------------------------------------------
        await asyncio.to_thread(db_link.heal)
        healed_at = time.monotonic()
        stop_writing.set()
        await asyncio.wait_for(writing, 10)
        missed = list(written)

        async def all_caught_up() -> bool | None:
            done = all(
                caught_up(s, start, missed)
                for s, start in zip(streams[:4], at_cut[:4], strict=True)
            )
            return True if done else None

        async def a_write() -> int | None:
            response = await visitor.post("after the heal")
            return response.json()["id"] if response.status_code == 201 else None

        catch_up_task = asyncio.create_task(eventually_ok(all_caught_up, RECOVER_WITHIN))
        write_task = asyncio.create_task(eventually_ok(a_write, RECOVER_WITHIN))
        await catch_up_task
        streams_caught_up = time.monotonic() - healed_at
        after = await write_task
        write_works = time.monotonic() - healed_at
        await eventually_ok(
            lambda: _value_if(health.first(200, healed_at) is not None), RECOVER_WITHIN
        )
        healthy = health.first(200, healed_at)
        # The first write after the heal may come before a worker's listener is back (that
        # worker's streams then get a resync instead). Once /healthz says every listener is
        # back, a write reaches every stream live, here and on the other instance.
        assert after > max(missed)
        live = (await visitor.post("after the recovery")).json()["id"]
        await asyncio.gather(*(s.wait_for_event("activity", str(live)) for s in streams))
        # Presence recovered too: the visitor's streams are listed again everywhere.
        await eventually_ok(
            lambda: _value_if_async(
                online_ids(direct.base_url), lambda ids: {visitor_id, late_id} <= ids
            ),
            RECOVER_WITHIN,
        )

        report = {
            **{f"{a.what} (1st round)": round(a.seconds, 2) for a in first_round},
            **{f"{a.what} (2nd round)": round(a.seconds, 2) for a in second_round},
            "stream open without cursor": round(late_stream_opened, 2),
            "healthz first 503 after cut": _rounded(health.first(503, cut_at)),
            "healthz slowest answer during cut": round(health.slowest(cut_at, healed_at), 2),
            "streams caught up after heal": round(streams_caught_up, 2),
            "healthz 200 after heal": _rounded(healthy),
            "write works after heal": round(write_works, 2),
            "items written during cut": len(missed),
            "pings per open stream during cut": pings_during_cut,
        }
        print("\npartition of the database link, seconds:", report)

        for answer in first_round + second_round:
            assert_refused_in_time(answer)
        first_503 = health.first(503, cut_at)
        assert first_503 is not None
        assert first_503 < ANSWER_WITHIN
        assert not health.failures, health.failures
        assert health.slowest(cut_at, healed_at) < HEALTH_WITHIN
        assert missed, "the other instance wrote nothing during the cut"
        assert late_stream_opened < ANSWER_WITHIN
        assert all(not s.closed for s in streams), "a stream was closed by the cut"
        assert all(count >= 2 for count in pings_during_cut), pings_during_cut
    finally:
        stop_writing.set()
        watching.cancel()
        if writing is not None:
            writing.cancel()
        await asyncio.gather(watching, *([writing] if writing else []), return_exceptions=True)
        await visitor.aclose()
        await latecomer.aclose()
        await reader.aclose()


async def _value_if(condition: bool) -> bool | None:
    return True if condition else None


async def _value_if_async(value: Awaitable[Any], accept: Callable[[Any], bool]) -> bool | None:
    try:
        return True if accept(await value) else None
    except (httpx.HTTPError, OSError):
        return None


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


@pytest.mark.slow
async def test_an_instance_cut_off_from_postgres_still_shuts_down_promptly(
    db_link: HoldingProxy, app_server: AppServerFactory, database_url: str
) -> None:
    """A deploy during a partition: SIGTERM must not wait on closing connections that hang."""
    via_link = through(database_url, db_link)
    server = await asyncio.to_thread(
        app_server, {"DATABASE_URL_UNPOOLED": via_link, **MANY}, database_url=via_link, workers=1
    )
    async with await Visitor.arrive(server.base_url) as visitor:
        # Several pooled connections open and idle when the link goes.
        posts = await asyncio.gather(*(visitor.post(f"warm {n}") for n in range(8)))
        assert all(p.status_code == 201 for p in posts)
        stream = await SSEClient.connect(server.base_url, cookies=visitor.cookie_header())
        try:
            await asyncio.to_thread(db_link.cut)
            await asyncio.sleep(1)
            started = time.monotonic()
            server.signal(signal.SIGTERM)
            code = await asyncio.to_thread(server.wait, 60)
            took = time.monotonic() - started
        finally:
            await stream.aclose()
    print(f"\nshutdown during a partition: exit code {code} after {took:.2f} s")
    assert code in (0, -signal.SIGTERM)  # uvicorn re-raises the signal it handled
    assert took < 20  # the sum of the shutdown steps' own bounds (8 s measured), not a hang
