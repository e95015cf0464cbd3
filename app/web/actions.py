"""POST endpoints: the only requests that change anything (CSRF-checked by middleware)."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, post

from app.db import Database
from app.identity import Identity
from app.services import counter, ratelimit, visitors
from app.services.presence import online
from app.web.common import html, identity_cookie, render, respond, runtime, visitor_of
from app.web.errors import TooManyRequests, Unprocessable
from app.web.fragments import render_item
from app.web.idempotent import once
from app.web.pages import refusals_as_page
from app.web.security import Kind, kind_headers
from app.web.validation import InvalidInput, clean_message, clean_name, parse_form


async def _form(request: Request[Any, Any, Any]) -> dict[str, str]:
    content_type = request.headers.get("content-type", "").lower()
    if content_type.startswith("multipart/form-data"):
        try:
            form = await request.form()
        except UnicodeDecodeError:
            raise InvalidInput("The text is not valid UTF-8.") from None
        except LookupError:  # a part names a character set Python does not know
            raise InvalidInput("Send the form as UTF-8.") from None
        return {k: v for k, v in form.items() if isinstance(v, str)}
    body = await request.body()  # read whatever it is, so an oversized body is a 413
    if content_type.startswith("application/x-www-form-urlencoded"):
        return parse_form(body)
    return {}


async def _limit(request: Request[Any, Any, Any], action: str, who: Identity, db: Database) -> None:
    rt = runtime(request)
    limited = await ratelimit.check(
        db,
        action=action,
        visitor=who.id.hex,
        ip=request.client.host if request.client else "unknown",
        per_minute=rt.settings.rate_limit_per_minute,
    )
    if limited is not None:
        raise TooManyRequests(
            f"Too many requests: try again in {limited.retry_after} s.",
            headers={"retry-after": str(limited.retry_after)},
        )


def _with_identity(
    request: Request[Any, Any, Any], response: Response[Any], who: Identity, new: bool
) -> Response[Any]:
    response.headers.update(kind_headers(Kind.ACTION))
    if new:
        response.set_cookie(identity_cookie(request, who))
    return response


@post("/counter/increment", status_code=200)
@refusals_as_page(area="counter-error")
async def increment(request: Request[Any, Any, Any]) -> Response[Any]:
    who, new = visitor_of(request)
    await request.body()  # unused, but an oversized body is refused (413) like everywhere

    async def act(db: Database) -> Response[Any]:
        await _limit(request, "increment", who, db)
        value = await counter.increment(db)
        return await respond(
            request,
            json=lambda: Response({"value": value}),
            htmx=lambda: html(render(request, "partials/counter.html", counter_value=value)),
        )

    return _with_identity(request, await once(request, who, "increment", act), who, new)


@post("/activity", status_code=201)
@refusals_as_page(area="post-error", field="message")
async def post_activity(request: Request[Any, Any, Any]) -> Response[Any]:
    who, new = visitor_of(request)
    try:
        message = clean_message((await _form(request)).get("message"))
    except InvalidInput as error:
        raise Unprocessable(str(error)) from None

    async def act(db: Database) -> Response[Any]:
        await _limit(request, "post", who, db)
        generation = runtime(request).hub.resync_generation
        item = await visitors.post_message(db, who, message)
        return await respond(
            request,
            json=lambda: Response({"id": item.id}, status_code=201),
            htmx=lambda: html(render_item(request, item, generation).body, status=201),
        )

    return _with_identity(request, await once(request, who, "post", act), who, new)


@post("/me", status_code=200)
@refusals_as_page(area="name-error", field="name")
async def rename(request: Request[Any, Any, Any]) -> Response[Any]:
    who, new = visitor_of(request)
    try:
        name = clean_name((await _form(request)).get("name"))
    except InvalidInput as error:
        raise Unprocessable(str(error)) from None

    async def act(db: Database) -> Response[Any]:
        await _limit(request, "rename", who, db)
        rt = runtime(request)
        try:
            renamed = await visitors.rename(db, who, name)
        except visitors.NameTaken as error:
            raise Unprocessable(str(error)) from None

        async def presence_fragment() -> Response[Any]:
            # Inside a keyed write's transaction the new name is not committed yet: read there.
            expiry = rt.settings.presence_expiry_seconds
            view = await (rt.presence_reads.get(None) if db is rt.db else online(db, expiry))
            return html(render(request, "partials/presence.html", presence=view))

        return await respond(
            request, json=lambda: Response({"name": renamed}), htmx=presence_fragment
        )

    return _with_identity(request, await once(request, who, "rename", act), who, new)
