"""Visitor identity in a signed cookie: no sign-up, and no database write to get one.

Litestar's session middleware rewrites its cookie on every response, which would make
the cacheable fragments uncacheable; this cookie is set only when a visitor is new.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

COOKIE_NAME = "ripple_visitor"
COOKIE_MAX_AGE = 365 * 24 * 3600

_ADJECTIVES = (
    "Amber", "Brave", "Calm", "Clever", "Curious", "Eager", "Gentle", "Happy", "Jolly",
    "Keen", "Lucky", "Merry", "Nimble", "Quiet", "Rapid", "Sunny", "Swift", "Witty",
)  # fmt: skip
_ANIMALS = (
    "Badger", "Crane", "Dolphin", "Falcon", "Fox", "Heron", "Koala", "Lynx", "Marten",
    "Otter", "Owl", "Panda", "Puffin", "Robin", "Seal", "Tiger", "Wombat", "Wren",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Identity:
    id: uuid.UUID
    guest_name: str  # the generated name; the display name lives in the database once recorded


def new_identity() -> Identity:
    name = f"{secrets.choice(_ADJECTIVES)} {secrets.choice(_ANIMALS)} {secrets.randbelow(90) + 10}"
    return Identity(id=uuid.uuid4(), guest_name=name)


def _sign(key: bytes, body: str) -> str:
    digest = hmac.new(key, body.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def encode(identity: Identity, key: bytes) -> str:
    name = base64.urlsafe_b64encode(identity.guest_name.encode()).rstrip(b"=").decode()
    body = f"v1.{identity.id.hex}.{name}"
    return f"{body}.{_sign(key, body)}"


def verify(value: str | None, keys: Sequence[bytes]) -> tuple[Identity, bool] | None:
    """The identity in a cookie value and whether the first (current) key signed it; None if
    it is missing, malformed, or signed by none of `keys` (SECRET_KEY, then its fallbacks)."""
    # Header bytes arrive as latin-1 text: hmac.compare_digest raises TypeError on non-ASCII.
    if not value or len(value) > 300 or not value.isascii():
        return None
    body, _, signature = value.rpartition(".")
    for index, key in enumerate(keys):
        if hmac.compare_digest(signature, _sign(key, body)):
            found = _parse(body)
            return None if found is None else (found, index == 0)
    return None


def decode(value: str | None, keys: bytes | Sequence[bytes]) -> Identity | None:
    """The identity in a cookie value signed by `keys` (one key, or current then older)."""
    verified = verify(value, [keys] if isinstance(keys, bytes) else keys)
    return None if verified is None else verified[0]


def _parse(body: str) -> Identity | None:
    try:
        version, hex_id, name = body.split(".")
        if version != "v1":
            return None
        guest = base64.urlsafe_b64decode(name + "=" * (-len(name) % 4)).decode()
        return Identity(id=uuid.UUID(hex=hex_id), guest_name=guest)
    except ValueError:
        return None
