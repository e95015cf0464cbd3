"""CSRF protection: a signed double-submit token in the `csrftoken` cookie.

Own code rather than Litestar's CSRFConfig, which signs with one secret (a key rotation
would fail every open page's writes) and never replaces a cookie it cannot verify (a
cookie from a rotated key or a sibling subdomain made every write 403 for good).

- Every unsafe request must echo the cookie in the `x-csrftoken` header (what the page
  script sends with every htmx request), or, for a plain form post without JavaScript, in
  the form's hidden `csrf_token` field; and the cookie must be signed by SECRET_KEY or one
  of SECRET_KEY_FALLBACKS. Tokens are ASCII-checked before any comparison
  (hmac.compare_digest raises on other text).
- A page or state-fragment GET whose cookie is missing or unsigned gets a fresh one.
  Cacheable item fragments, static files and the probes never set it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from http.cookies import SimpleCookie
from typing import Any

from litestar import Request
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from app.config import Settings
from app.web.errors import send_error, wants_json_header
from app.web.validation import InvalidInput, parse_form

COOKIE = "csrftoken"
HEADER = "x-csrftoken"
FORM_FIELD = "csrf_token"
STATE_KEY = "csrf_token"  # scope["state"][STATE_KEY]: the token this response's page uses
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Responses that must not set a cookie: a CDN may cache items and static files.
NO_COOKIE_PATHS = re.compile(r"/(fragments/activity/.*|static/.*|healthz|metrics|events)")
REFUSED = "Missing or wrong CSRF token: reload the page and try again."


def _signature(key: bytes, token: str) -> str:
    digest = hmac.new(key, b"csrf:" + token.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def new_token(key: bytes) -> str:
    token = secrets.token_urlsafe(24)
    return f"{token}.{_signature(key, token)}"


def is_signed(value: str, keys: tuple[bytes, ...]) -> bool:
    """Whether a token was signed by one of `keys` (current key first)."""
    if not value or len(value) > 200 or not value.isascii():
        return False
    token, _, signature = value.rpartition(".")
    return any(hmac.compare_digest(signature, _signature(key, token)) for key in keys)


def cookie_header(value: str, *, secure: bool) -> bytes:
    cookie: SimpleCookie = SimpleCookie()
    cookie[COOKIE] = value
    morsel = cookie[COOKIE]
    morsel["path"] = "/"
    morsel["samesite"] = "Lax"
    morsel["max-age"] = str(365 * 24 * 3600)
    if secure:
        morsel["secure"] = True
    return morsel.OutputString().encode()


def csrf_protection(settings: Settings) -> Any:
    """Litestar middleware factory: `middleware=[csrf_protection(settings)]`."""
    keys = settings.verifying_keys
    signing_key = settings.signing_key

    def middleware(app: ASGIApp) -> ASGIApp:
        async def guard(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != ScopeType.HTTP or (
                scope["method"] in SAFE_METHODS and NO_COOKIE_PATHS.fullmatch(scope["path"])
            ):
                # Reads that never set the cookie (items every page fetches at once, static
                # files, probes) skip the cookie parsing and signature check.
                await app(scope, receive, send)
                return
            request: Request[Any, Any, Any] = Request(scope, receive)
            cookie = request.cookies.get(COOKIE, "")
            valid = is_signed(cookie, keys)
            if scope["method"] not in SAFE_METHODS:
                echoed = request.headers.get(HEADER) or await _form_token(request)
                if not (valid and echoed.isascii() and hmac.compare_digest(echoed, cookie)):
                    if not valid:  # a fresh cookie with the refusal: the next try can succeed
                        send = _with_cookie(send, new_token(signing_key), settings.production)
                    json = wants_json_header(request.headers.get("accept", ""))
                    await send_error(send, 403, REFUSED, json=json, production=settings.production)
                    return
            elif not valid:
                cookie, valid = new_token(signing_key), True
                send = _with_cookie(send, cookie, settings.production)
            # The page renders it into its forms' hidden field (posting without JavaScript).
            scope.setdefault("state", {})[STATE_KEY] = cookie if valid else ""
            await app(scope, receive, send)

        return guard

    return middleware


async def _form_token(request: Request[Any, Any, Any]) -> str:
    """The hidden form field of a plain form post (Litestar keeps the body it read for the
    handler); an oversized body raises the same 413 the handler would."""
    if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        return ""
    try:
        return parse_form(await request.body()).get(FORM_FIELD, "")
    except InvalidInput:
        return ""


def token_of(scope: Scope) -> str:
    """The CSRF token of this request's page (empty where none applies)."""
    return str(scope.get("state", {}).get(STATE_KEY, ""))


def _with_cookie(send: Send, value: str, secure: bool) -> Send:
    header = (b"set-cookie", cookie_header(value, secure=secure))

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            message["headers"] = [*message.get("headers", ()), header]
        await send(message)

    return sending
