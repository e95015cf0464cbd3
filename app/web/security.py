"""One definition of every response kind's headers, security headers included.

Every response Ripple sends takes its headers from here: Litestar's handlers through
`kind_headers`, the front door's fast paths (the stream, cached items, its own errors)
through `kind_pairs`, and anything else Litestar answers (its own 404, 405, 413 ...)
through the before-send hook that adds `security_pairs`. A new kind is a new entry below.
"""

from __future__ import annotations

import enum
import functools

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'self'; form-action 'self'; "
    "object-src 'none'"
)
SECURITY_HEADERS = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "x-frame-options": "DENY",
}
HSTS = "max-age=31536000"
FRAGMENT_VARY = "Accept, HX-Request"


class Kind(enum.Enum):
    """What a response is; each kind has one set of headers."""

    PAGE = "page"  # GET /: personal (the visitor's name), never stored
    STATE = "state"  # counter, presence, feed lists: shared, always revalidated
    ITEM = "item"  # one feed item: the same for everyone, cacheable by proxies and CDNs
    ITEM_JSON = "item-json"  # one feed item as JSON: not cached (it names the author id)
    ACTION = "action"  # the answer to a POST
    STREAM = "stream"  # GET /events
    PROBE = "probe"  # /healthz, /metrics
    ERROR = "error"  # every error answer, whoever raised it


KIND_HEADERS: dict[Kind, dict[str, str]] = {
    Kind.PAGE: {"cache-control": "no-store"},
    Kind.STATE: {"cache-control": "no-cache", "vary": FRAGMENT_VARY},
    # An item never changes, so a CDN may keep it; hiding one is rare and pages learn of it
    # through `resync` and the uncached lists, so five minutes of a cached copy is the cost.
    Kind.ITEM: {"cache-control": "public, max-age=300, immutable", "vary": FRAGMENT_VARY},
    Kind.ITEM_JSON: {"cache-control": "no-cache", "vary": FRAGMENT_VARY},
    Kind.ACTION: {"cache-control": "no-store"},
    Kind.STREAM: {
        "content-type": "text/event-stream; charset=utf-8",
        "cache-control": "no-cache",
        "x-accel-buffering": "no",  # nginx and others: never buffer the stream
    },
    Kind.PROBE: {"cache-control": "no-store"},
    Kind.ERROR: {"cache-control": "no-store"},
}


@functools.cache
def security_pairs(production: bool) -> tuple[tuple[bytes, bytes], ...]:
    """The security headers as ASGI header pairs (HSTS only in production)."""
    wanted = dict(SECURITY_HEADERS, **({"strict-transport-security": HSTS} if production else {}))
    return tuple((name.encode(), value.encode()) for name, value in wanted.items())


@functools.cache
def kind_pairs(kind: Kind, production: bool) -> tuple[tuple[bytes, bytes], ...]:
    """A kind's headers followed by the security headers, as ASGI header pairs."""
    own = tuple((name.encode(), value.encode()) for name, value in KIND_HEADERS[kind].items())
    return own + security_pairs(production)


def kind_headers(kind: Kind) -> dict[str, str]:
    """A kind's headers for a Litestar `Response` (the before-send hook adds security)."""
    return dict(KIND_HEADERS[kind])
