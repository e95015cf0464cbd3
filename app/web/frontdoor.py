"""The front door: every HTTP request Ripple answers comes through `FrontDoor.__call__`.

In order, for every request:
1. the client address: the peer, or, from a trusted proxy, the `X-Forwarded-For` entry
   PROXY_HOPS places from the right (never one the client wrote);
2. `HEAD` is answered as `GET` without the body, on every route;
3. the two requests every event multiplies are answered here, ahead of Litestar's
   middleware (its send wrappers would run on every frame of every stream and on every
   item answered from memory): `/events`, and feed items already rendered (or being
   warmed). Under uvicorn a cached item usually never gets this far: the HTTP protocol
   asks `item_from_memory`, which builds the same answer, and writes it itself;
4. everything else goes to Litestar (CSRF, routes, the before-send hook).

Both paths take their headers from app.web.security, their inputs from app.web.params
and their error bodies from app.web.errors, so a protection added there holds for both.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
from collections.abc import Iterable
from typing import cast

from litestar import Litestar
from litestar.enums import ScopeType
from litestar.types import (
    HTTPScope,
    LifeSpanReceive,
    LifeSpanScope,
    LifeSpanSend,
    Message,
    Receive,
    Scope,
    Send,
)

from app import metrics
from app.runtime import Runtime
from app.web import params
from app.web.errors import DEFAULT_REASONS, send_error, wants_json_header
from app.web.eventstream import serve_stream
from app.web.security import Kind, kind_pairs

log = logging.getLogger("ripple.frontdoor")

ITEM_PREFIX = "/fragments/activity/"
ITEM_PREFIX_BYTES = ITEM_PREFIX.encode()
# How long an item fetch waits for the read its notification started (app.itemcache)
# before making its own: the read is one indexed row, well under this unless the
# database is in trouble.
WARM_WAIT_SECONDS = 1.0


class ClientAddress:
    """Which address a request comes from, given the proxies we trust.

    Own code rather than uvicorn's proxy-headers middleware: with FORWARDED_ALLOW_IPS='*'
    (what a PaaS needs, its router's address being unknown) uvicorn takes the leftmost
    X-Forwarded-For entry, which the client wrote itself.
    """

    def __init__(self, allowed: str, hops: int) -> None:
        self.hops = hops
        entries = [entry.strip() for entry in allowed.split(",") if entry.strip()]
        self.trust_all = "*" in entries
        self.networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        self.literals: set[str] = set()
        for entry in entries:
            try:
                self.networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                self.literals.add(entry)  # e.g. "unix:" or a socket path
        self._trusted: dict[str, bool] = {}

    def trusts(self, peer: str) -> bool:
        if self.trust_all:
            return True
        known = self._trusted.get(peer)
        if known is None:
            known = peer in self.literals or self._in_networks(peer)
            if len(self._trusted) > 1024:  # peers are few proxies; never let it grow
                self._trusted.clear()
            self._trusted[peer] = known
        return known

    def _in_networks(self, peer: str) -> bool:
        try:
            address = ipaddress.ip_address(peer)
        except ValueError:
            return False
        return any(address in network for network in self.networks)

    def resolve(self, scope: Scope) -> None:
        """Put the client's address (and the scheme it used) into `scope`."""
        peer = scope.get("client")
        if not peer or not self.trusts(peer[0]):
            return
        forwarded: list[str] = []
        proto = ""
        for name, value in scope["headers"]:
            if name == b"x-forwarded-for":
                forwarded.extend(value.decode("latin-1").split(","))
            elif name == b"x-forwarded-proto":
                proto = value.decode("latin-1")
        hosts = [entry.strip() for entry in forwarded if entry.strip()]
        if hosts:
            # Each proxy appends what it saw: the entry `hops` from the right was written by
            # our outermost proxy. Fewer entries than hops: the nearest one is all there is.
            host = hosts[-self.hops] if len(hosts) >= self.hops else hosts[0]
            scope["client"] = (_without_port(host), 0)
        scheme = proto.rsplit(",", 1)[-1].strip().lower()
        if scheme in {"http", "https"}:
            scope["scheme"] = scheme


def _without_port(host: str) -> str:
    if host.startswith("["):  # [v6]:port
        return host[1:].partition("]")[0]
    if host.count(":") == 1:  # v4:port
        return host.partition(":")[0]
    return host


def _without_body(send: Send) -> Send:
    """HEAD: the GET answer's status and headers, no body."""
    ended = False

    async def head_send(message: Message) -> None:
        nonlocal ended
        if message["type"] == "http.response.body":
            if ended:
                return
            ended = True
            message = {"type": "http.response.body", "body": b"", "more_body": False}
        await send(message)

    return head_send


class FrontDoor(Litestar):
    """The Litestar app, entered through the front door (see the module docstring)."""

    _runtime: Runtime | None = None
    _client: ClientAddress | None = None

    async def __call__(
        self,
        scope: Scope | LifeSpanScope,
        receive: Receive | LifeSpanReceive,
        send: Send | LifeSpanSend,
    ) -> None:
        if scope["type"] != ScopeType.HTTP:
            await super().__call__(scope, receive, send)
            return
        await self._enter(cast(HTTPScope, scope), cast(Receive, receive), cast(Send, send))

    async def _enter(self, scope: HTTPScope, receive: Receive, send: Send) -> None:
        rt = self._runtime
        client = self._client
        if rt is None or client is None:
            rt = self._runtime = self.state.runtime
            settings = rt.settings
            client = self._client = ClientAddress(settings.forwarded_allow_ips, settings.proxy_hops)
        client.resolve(scope)
        head = scope["method"] == "HEAD"
        if head:
            # A copy: the server keeps its own scope, and knows the answer has no body.
            scope = cast(HTTPScope, {**scope, "method": "GET"})
            send = _without_body(send)
        path: str = scope["path"]
        try:
            if path == "/events":
                await serve_stream(rt, scope, receive, send, head=head)
                return
            if path.startswith(ITEM_PREFIX) and await self._cached_item(rt, scope, send):
                return
        except Exception:
            log.exception("unhandled error during %s %s", scope["method"], path)
            # If the answer had started, the server refuses a second start: nothing to add.
            with contextlib.suppress(Exception):
                await send_error(
                    send,
                    500,
                    DEFAULT_REASONS[500],
                    json=_accepts_json(scope),
                    production=rt.settings.production,
                )
            return
        await super().__call__(scope, receive, send)

    async def _cached_item(self, rt: Runtime, scope: HTTPScope, send: Send) -> bool:
        """Answer a feed item from this worker's rendered items; False if not there.

        An item whose notification is being warmed (app.itemcache) is waited for: every page
        asks for it at once, and each early ask would otherwise be a trip through Litestar.
        """
        if scope["method"] != "GET":
            return False
        item_id = params.item_id(scope["path"][len(ITEM_PREFIX) :])
        if item_id is None:
            return False  # Litestar's route answers the 404 (one place for that answer)
        cacheable, if_none_match = _item_request(scope["headers"])
        if not cacheable:
            return False
        cache = rt.item_cache
        cache.fetched = True
        entry = cache.get(item_id)
        if entry is None and cache.warming(item_id):
            await cache.wait_warm(item_id, WARM_WAIT_SECONDS)
            entry = cache.get(item_id)
        if entry is None:
            return False
        metrics.ITEMS_SERVED.inc()
        headers = [(b"etag", entry.etag.encode()), *kind_pairs(Kind.ITEM, rt.settings.production)]
        if if_none_match == entry.etag.encode():
            status, body = 304, b""
        else:
            status, body = 200, entry.body
            headers.append((b"content-type", b"text/html; charset=utf-8"))
            headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})
        return True

    def item_from_memory(
        self, target: bytes, headers: list[tuple[bytes, bytes]], head: bool
    ) -> tuple[int, bytes] | None:
        """For the HTTP protocol (app.httpprotocol): a cached item's whole answer after its
        status line and `date`, or None to take the usual way in.

        The same answer as `_cached_item` with no ASGI cycle, scope or task around it: that
        cycle costs more than the answer, and every event makes every page ask for one.
        `target` is the request line's target; anything unusual in it (a query, escapes, an
        absolute form) goes the usual way.
        """
        rt = self._runtime
        if rt is None or not target.startswith(ITEM_PREFIX_BYTES) or b"?" in target:
            return None
        item_id = params.item_id(target[len(ITEM_PREFIX_BYTES) :].decode("latin-1"))
        if item_id is None:
            return None
        cacheable, if_none_match = _item_request(headers)
        if not cacheable:
            return None
        cache = rt.item_cache
        cache.fetched = True
        entry = cache.get(item_id)
        if entry is None:
            return None
        metrics.ITEMS_SERVED.inc()
        if if_none_match == entry.etag.encode():
            return 304, entry.not_modified
        return 200, entry.ok_head if head else entry.ok


def _item_request(headers: Iterable[tuple[bytes, bytes]]) -> tuple[bool, bytes]:
    """(whether a cached HTML answer fits the request, its If-None-Match)."""
    if_none_match = b""
    for name, value in headers:
        if name == b"accept" and b"application/json" in value:
            return False, b""  # JSON is not cached
        if name == b"if-none-match":
            if_none_match = value
        elif name == b"transfer-encoding" or (name == b"content-length" and value != b"0"):
            return False, b""  # a GET with a body: let the usual way read or refuse it
    return True, if_none_match


def _accepts_json(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"accept":
            return wants_json_header(value.decode("latin-1"))
    return False
