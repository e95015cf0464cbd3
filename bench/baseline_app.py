"""The naive Ripple the benchmark compares against: same endpoints, the obvious way.

A Litestar app whose `/events` is Litestar's `ServerSentEvent` over an async generator
reading a per-stream unbounded `asyncio.Queue` (with `asyncio.wait_for` for the ping),
fed by one plain asyncpg listener per worker; fragments are rendered on every request
from a query, with no caching. Same tables as Ripple (`app.models`), through plain SQL.
Writes NOTIFY inside their transaction but take no lock for commit order, and there is
no presence: both make this baseline cheaper than Ripple, which is the conservative side.

Run: `DATABASE_URL=... uvicorn bench.baseline_app:app --workers 2`.
"""

from __future__ import annotations

import asyncio
import html
import os
import uuid
from collections.abc import AsyncGenerator
from typing import Any, ClassVar

import asyncpg
from litestar import Litestar, Request, Response, get, post
from litestar.config.csrf import CSRFConfig
from litestar.datastructures import Cookie
from litestar.response import ServerSentEvent, ServerSentEventMessage

CHANNEL = "ripple_baseline"
COOKIE = "baseline_visitor"
HTML = "text/html; charset=utf-8"


class State:
    pool: ClassVar[asyncpg.Pool | None] = None
    listener: ClassVar[asyncpg.Connection | None] = None
    queues: ClassVar[set[asyncio.Queue[tuple[str, str]]]] = set()


def _dsn() -> str:
    url = os.environ["DATABASE_URL"]
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


def _on_notify(_conn: Any, _pid: int, _channel: str, payload: str) -> None:
    kind, _, ref = payload.partition(":")
    for queue in State.queues:
        queue.put_nowait((kind, ref))


async def startup() -> None:
    State.pool = await asyncpg.create_pool(_dsn(), min_size=2, max_size=10)
    State.listener = await asyncpg.connect(_dsn())
    await State.listener.add_listener(CHANNEL, _on_notify)


async def shutdown() -> None:
    if State.listener is not None:
        await State.listener.close()
    if State.pool is not None:
        await State.pool.close()


def _pool() -> asyncpg.Pool:
    assert State.pool is not None
    return State.pool


def _visitor(request: Request[Any, Any, Any]) -> tuple[uuid.UUID, bool]:
    try:
        return uuid.UUID(request.cookies.get(COOKIE, "")), False
    except ValueError:
        return uuid.uuid4(), True


def _wants_json(request: Request[Any, Any, Any]) -> bool:
    return "application/json" in request.headers.get("accept", "")


def _item_html(row: asyncpg.Record) -> str:
    return (
        f'<li id="activity-{row["id"]}" class="item item--{row["kind"]}" data-id="{row["id"]}">'
        f'<span class="item-author">{html.escape(row["author_name"])}</span> '
        f'<time datetime="{row["created_at"].isoformat()}"></time>'
        f'<p class="item-body">{html.escape(row["body"])}</p></li>'
    )


ITEM_COLUMNS = "id, kind, author_name, body, created_at"


@get("/")
async def index(request: Request[Any, Any, Any]) -> Response[Any]:
    who, new = _visitor(request)
    async with _pool().acquire() as conn:
        value = await conn.fetchval("SELECT value FROM counters WHERE id = 1")
        rows = await conn.fetch(
            f"SELECT {ITEM_COLUMNS} FROM activity WHERE hidden_at IS NULL ORDER BY id DESC LIMIT 50"
        )
    items = "".join(_item_html(r) for r in rows)
    body = f"<!doctype html><title>Baseline</title><p id=counter>{value}</p><ul>{items}</ul>"
    response = Response(body, media_type=HTML)
    if new:
        response.set_cookie(Cookie(key=COOKIE, value=who.hex, httponly=True, samesite="lax"))
    return response


async def _messages(
    queue: asyncio.Queue[tuple[str, str]],
) -> AsyncGenerator[ServerSentEventMessage, None]:
    try:
        yield ServerSentEventMessage(event="ping", data="", retry=1000)
        while True:
            try:
                kind, ref = await asyncio.wait_for(queue.get(), 15)
            except TimeoutError:
                yield ServerSentEventMessage(event="ping", data="")
                continue
            if kind == "activity":
                yield ServerSentEventMessage(event=kind, data=ref, id=ref)
            else:
                yield ServerSentEventMessage(event=kind, data=ref)
    finally:
        State.queues.discard(queue)


@get("/events")
async def events() -> ServerSentEvent:
    queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
    State.queues.add(queue)
    return ServerSentEvent(_messages(queue), headers={"cache-control": "no-cache"})


@get("/fragments/activity/{item_id:int}")
async def activity_item(item_id: int) -> Response[Any]:
    async with _pool().acquire() as conn:
        row = await conn.fetchrow(
            f"SELECT {ITEM_COLUMNS} FROM activity WHERE id = $1 AND hidden_at IS NULL", item_id
        )
    if row is None:
        return Response("Not found.", status_code=404, media_type="text/plain")
    return Response(_item_html(row), media_type=HTML)


@get("/fragments/activity")
async def activity_after(after: int = 0) -> Response[Any]:
    async with _pool().acquire() as conn:
        rows = await conn.fetch(
            f"SELECT {ITEM_COLUMNS} FROM activity WHERE hidden_at IS NULL AND id > $1 "
            "ORDER BY id LIMIT 50",
            after,
        )
    return Response("".join(_item_html(r) for r in reversed(rows)), media_type=HTML)


@get("/fragments/counter")
async def counter_fragment() -> Response[Any]:
    async with _pool().acquire() as conn:
        value = await conn.fetchval("SELECT value FROM counters WHERE id = 1")
    return Response(f'<span data-value="{value}">{value}</span>', media_type=HTML)


@post("/counter/increment", status_code=200)
async def increment(request: Request[Any, Any, Any]) -> Response[Any]:
    async with _pool().acquire() as conn, conn.transaction():
        value = await conn.fetchval(
            "UPDATE counters SET value = value + 1 WHERE id = 1 RETURNING value"
        )
        await conn.execute("SELECT pg_notify($1, 'counter:1')", CHANNEL)
    if _wants_json(request):
        return Response({"value": value})
    return Response(f'<span data-value="{value}">{value}</span>', media_type=HTML)


@post("/activity", status_code=201)
async def post_activity(request: Request[Any, Any, Any]) -> Response[Any]:
    who, _ = _visitor(request)
    form = await request.form()
    message = str(form.get("message") or "").strip()
    if not 1 <= len(message) <= 280:
        return Response("Write 1 to 280 characters.", status_code=422, media_type="text/plain")
    name = f"Guest {who.hex[:6]}"
    async with _pool().acquire() as conn, conn.transaction():
        await conn.execute(
            "INSERT INTO visitors (id, name) VALUES ($1, $2) ON CONFLICT DO NOTHING", who, name
        )
        row = await conn.fetchrow(
            "INSERT INTO activity (kind, author_id, author_name, body) "
            f"VALUES ('message', $1, $2, $3) RETURNING {ITEM_COLUMNS}",
            who,
            name,
            message,
        )
        await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, f"activity:{row['id']}")
    if _wants_json(request):
        return Response({"id": row["id"]}, status_code=201)
    return Response(_item_html(row), status_code=201, media_type=HTML)


@get("/healthz")
async def healthz() -> Response[Any]:
    ok = State.listener is not None and not State.listener.is_closed()
    return Response({"status": "ok" if ok else "down"}, status_code=200 if ok else 503)


app = Litestar(
    route_handlers=[
        index,
        events,
        activity_item,
        activity_after,
        counter_fragment,
        increment,
        post_activity,
        healthz,
    ],
    on_startup=[startup],
    on_shutdown=[shutdown],
    csrf_config=CSRFConfig(
        secret=os.environ.get("SECRET_KEY", "baseline-secret"),
        cookie_name="csrftoken",
        header_name="x-csrftoken",
        exclude=["/events", "/healthz"],
    ),
    openapi_config=None,
)
