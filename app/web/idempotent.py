"""The `Idempotency-Key` header on writes: a repeat answers as the first committed answer did.

A handler hands its write and its answer to `once` as one function of the database to use:
without a key that is the ordinary database (the one-statement fast paths stay as they
are); with a key it is one transaction that also records the answer, so the record exists
if and only if the write committed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from litestar import Request, Response
from litestar.enums import MediaType
from litestar.serialization import get_serializer
from litestar.utils.helpers import get_enum_string_value

from app.db import Database
from app.identity import Identity
from app.services import idempotency
from app.web.common import runtime
from app.web.errors import PublicError, Unprocessable

HEADER = "idempotency-key"
REPLAYED_HEADER = "idempotent-replayed"

Act = Callable[[Database], Awaitable[Response[Any]]]


class InFlightConflict(PublicError):
    status_code = 409


def key_of(request: Request[Any, Any, Any]) -> str | None:
    """The request's key, None without one; a malformed key is a 422 with the reason."""
    try:
        return idempotency.parse_key(request.headers.getall(HEADER, []))
    except idempotency.InvalidKey as error:
        raise Unprocessable(str(error)) from None


def _answer(request: Request[Any, Any, Any], response: Response[Any]) -> tuple[int, str, bytes]:
    """Status, content type and body as Litestar would send them."""
    handler = request.route_handler
    status = response.status_code or handler.status_code
    media_type = get_enum_string_value(response.media_type or handler.media_type or MediaType.JSON)
    body = response.render(
        response.content, media_type, get_serializer(response.response_type_encoders)
    )
    return status, media_type, body


def _replay(stored: idempotency.StoredAnswer) -> Response[Any]:
    headers = {REPLAYED_HEADER: "true"}
    if 300 <= stored.status < 400:
        # The only redirect a write answers: a plain form post goes back to the page.
        headers["location"] = "/"
    return Response(
        content=stored.body,
        status_code=stored.status,
        media_type=stored.content_type,
        headers=headers,
    )


async def once(
    request: Request[Any, Any, Any], who: Identity, action: str, act: Act
) -> Response[Any]:
    """Run `act` once per (visitor, key); without a key, simply run it."""
    key = key_of(request)
    db = runtime(request).db
    if key is None:
        return await act(db)
    try:
        async with idempotency.claim(db, who.id, key, action) as claim:
            if claim.stored is not None:
                return _replay(claim.stored)
            response = await act(claim.db)
            await claim.record(*_answer(request, response))
    except idempotency.InFlight:
        raise InFlightConflict(
            "A request with this Idempotency-Key is still being processed; try again shortly.",
            headers={"retry-after": "1"},
        ) from None
    except idempotency.KeyUsedElsewhere:
        raise Unprocessable(
            "This Idempotency-Key was already used for a different action; send a new key."
        ) from None
    return response  # only now committed
