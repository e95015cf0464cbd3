"""What visitors may write: checked on code points, with a reason a person can read."""

from __future__ import annotations

import unicodedata
from urllib.parse import parse_qsl

from app.models import MESSAGE_MAX, NAME_MAX

# Characters that reorder the text around them (Trojan Source) are never accepted.
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
# Everything that starts a new line somewhere (str.splitlines, HTML pre-wrap, JavaScript).
_LINE_BREAKS = frozenset("\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029")


class InvalidInput(ValueError):
    """Rejected input; str(error) is shown to the visitor."""


def parse_form(body: bytes) -> dict[str, str]:
    """Decode an urlencoded form strictly: invalid UTF-8 is an error, not U+FFFD."""
    try:
        text = body.decode("utf-8")
        pairs = parse_qsl(text, keep_blank_values=True, encoding="utf-8", errors="strict")
    except UnicodeDecodeError:
        raise InvalidInput("The text is not valid UTF-8.") from None
    return dict(pairs)


def _check_characters(text: str, *, allow_newlines: bool) -> None:
    for char in text:
        if char == "\n" and allow_newlines:
            continue
        if char in _BIDI_CONTROLS:
            raise InvalidInput("Text direction override characters are not allowed.")
        if unicodedata.category(char) in {"Cc", "Cs"}:
            where = "a message" if allow_newlines else "a name"
            raise InvalidInput(f"Control characters are not allowed in {where}.")


def clean_message(raw: str | None) -> str:
    """1 to MESSAGE_MAX code points after trimming; newlines kept (CRLF and CR become LF)."""
    if raw is None:
        raise InvalidInput("Write a message first.")
    text = raw.replace("\r\n", "\n").replace("\r", "\n").strip()
    if not text:
        raise InvalidInput("Write a message first.")
    if len(text) > MESSAGE_MAX:
        raise InvalidInput(
            f"Messages can be at most {MESSAGE_MAX} characters; this one has {len(text)}."
        )
    _check_characters(text, allow_newlines=True)
    return text


def clean_name(raw: str | None) -> str:
    """1 to NAME_MAX code points after trimming, on one line."""
    text = (raw or "").strip()
    if not text:
        raise InvalidInput("A name needs at least one character.")
    if len(text) > NAME_MAX:
        raise InvalidInput(f"Names can be at most {NAME_MAX} characters; this one has {len(text)}.")
    if any(char in _LINE_BREAKS for char in text):
        raise InvalidInput("A name must fit on one line.")
    _check_characters(text, allow_newlines=False)
    return text
