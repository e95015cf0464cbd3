"""The security headers every response carries."""

from __future__ import annotations

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


@functools.cache
def security_header_pairs(production: bool) -> tuple[tuple[bytes, bytes], ...]:
    """The security headers as ASGI header pairs (HSTS only in production)."""
    wanted = dict(SECURITY_HEADERS, **({"strict-transport-security": HSTS} if production else {}))
    return tuple((name.encode(), value.encode()) for name, value in wanted.items())
