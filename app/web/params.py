"""One validator per input that arrives in a URL or header: feed item ids and cursors.

The front door's fast paths and Litestar's handlers both call these, so an id the one
accepts is an id the other accepts.
"""

from __future__ import annotations

import re

from app.models import ACTIVITY_ID_MAX

# Canonical decimals only: "+5", "05", "1_0" and a fullwidth or Arabic-Indic "5" would
# each be another cacheable URL of the same item (int() accepts all four).
_ITEM_ID = re.compile(r"[1-9][0-9]{0,18}")
_CURSOR = re.compile(r"[0-9]{1,18}")


def item_id(raw: str) -> int | None:
    """A feed item id from a path segment, or None if it is not one (a 404)."""
    if _ITEM_ID.fullmatch(raw) is None:
        return None
    value = int(raw)
    return value if value <= ACTIVITY_ID_MAX else None


class BadCursor(ValueError):
    """A feed cursor that is not a whole number."""


def cursor(raw: str | None) -> int | None:
    """A feed cursor (`after`, `before`, `Last-Event-ID`): None when absent or empty.

    Raises BadCursor for anything but ASCII digits; callers decide whether that is an
    error (`?after=`) or ignored (`Last-Event-ID`, per the contract).
    """
    if raw is None:
        return None
    value = raw.strip()
    if not value:
        return None
    if _CURSOR.fullmatch(value) is None:
        raise BadCursor(value)
    return int(value)


def first_cursor(*candidates: str | None) -> int | None:
    """The first well-formed cursor among candidates, malformed ones ignored."""
    for raw in candidates:
        try:
            value = cursor(raw)
        except BadCursor:
            continue
        if value is not None:
            return value
    return None
