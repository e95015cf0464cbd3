"""Small helpers every handler module shares."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Literal

from litestar import Request, Response
from litestar.datastructures import Cookie
from litestar.response import Redirect

from app import identity
from app.runtime import Runtime

HTML = "text/html"  # Litestar appends the charset


def runtime(request: Request[Any, Any, Any]) -> Runtime:
    rt: Runtime = request.app.state.runtime
    return rt


def wants_json(request: Request[Any, Any, Any]) -> bool:
    return "application/json" in request.headers.get("accept", "")


AnswerKind = Literal["json", "htmx", "plain"]


def answer_kind(request: Request[Any, Any, Any]) -> AnswerKind:
    """How a write is answered: JSON when asked; a fragment for htmx (and for any other
    client that does not ask for a page); a redirect to the page for a plain form post,
    which a browser without JavaScript sends with `Accept: text/html` and no HX-Request."""
    if wants_json(request):
        return "json"
    if request.headers.get("hx-request") == "true":
        return "htmx"
    return "plain" if "text/html" in request.headers.get("accept", "") else "htmx"


def back_to_page() -> Response[Any]:
    """303 See Other: the browser then GETs the page, which shows the write's result."""
    return Redirect("/", status_code=303)


Answer = Callable[[], Response[Any] | Awaitable[Response[Any]]]


async def respond(
    request: Request[Any, Any, Any], *, json: Answer, htmx: Answer, plain: Answer = back_to_page
) -> Response[Any]:
    """Build only the answer this request asked for (a fragment may need a read)."""
    build = {"json": json, "htmx": htmx, "plain": plain}[answer_kind(request)]
    answer = build()
    return answer if isinstance(answer, Response) else await answer


def visitor_of(request: Request[Any, Any, Any]) -> tuple[identity.Identity, bool]:
    """The visitor's identity, and whether its cookie must be (re)set: a new visitor, or
    one whose cookie an older key (SECRET_KEY_FALLBACKS) signed, re-signed with the new."""
    keys = runtime(request).settings.verifying_keys
    verified = identity.verify(request.cookies.get(identity.COOKIE_NAME), keys)
    if verified is not None:
        who, current = verified
        return who, not current
    return identity.new_identity(), True


def identity_cookie(request: Request[Any, Any, Any], who: identity.Identity) -> Cookie:
    settings = runtime(request).settings
    return Cookie(
        key=identity.COOKIE_NAME,
        value=identity.encode(who, settings.signing_key),
        max_age=identity.COOKIE_MAX_AGE,
        httponly=True,
        samesite="lax",
        secure=settings.production,
        path="/",
    )


def render(request: Request[Any, Any, Any], template: str, **context: Any) -> str:
    engine = request.app.template_engine
    assert engine is not None
    return str(engine.get_template(template).render(**context))


def html(
    body: str | bytes, status: int = 200, headers: dict[str, str] | None = None
) -> Response[Any]:
    return Response(content=body, status_code=status, media_type=HTML, headers=headers)
