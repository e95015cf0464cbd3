"""What visitors may write: checked on code points, with a reason a person can read.

Names are NFKC-normalised (fullwidth letters, ligatures and compatibility forms become their
plain form) and must show something: a name of invisible characters, or one carrying format
characters or blank filler letters that could make two names look alike, is refused. Combining
marks need a character to sit on and may stack at most MAX_MARKS_IN_A_ROW high, in names and
messages. Whether a name is already someone else's is app.services.visitors' question.
"""

from __future__ import annotations

import unicodedata
from urllib.parse import parse_qsl

from app.models import MESSAGE_MAX, NAME_MAX

# Characters that reorder the text around them (Trojan Source) are never accepted.
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
# Everything that starts a new line somewhere (str.splitlines, HTML pre-wrap, JavaScript).
_LINE_BREAKS = frozenset("\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029")
# Letters and symbols that draw nothing (Hangul fillers, the blank Braille pattern) and
# characters that render as nothing or only join others. Unicode calls the fillers letters.
_BLANKS = frozenset(
    "\u115f\u1160\u3164\uffa0\u2800\u034f\u17b4\u17b5\u180e\u00ad\ufeff"
    "\u200b\u200c\u200d\u200e\u200f\u2060\u2061\u2062\u2063\u2064"
    "\U0001d159\U0001d173\U0001d174\U0001d175\U0001d176\U0001d177\U0001d178\U0001d179"
    "\U0001d17a\U0001bca0\U0001bca1\U0001bca2\U0001bca3"
)
# Categories that show nothing by themselves: formats, controls, surrogates, private use,
# unassigned, separators, and combining marks (they only decorate the character before them).
_INVISIBLE_CATEGORIES = frozenset(
    {"Cf", "Cc", "Cs", "Co", "Cn", "Zl", "Zp", "Zs", "Mn", "Mc", "Me"}
)
# Combining marks stacked on one character: three allow Tibetan stacks and pointed Hebrew
# with a cantillation mark; more only pile ink over the lines around them ("Zalgo" text).
MAX_MARKS_IN_A_ROW = 3


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


def is_invisible(char: str) -> bool:
    """Whether a character shows nothing by itself (see _BLANKS, _INVISIBLE_CATEGORIES)."""
    return char in _BLANKS or char.isspace() or unicodedata.category(char) in _INVISIBLE_CATEGORIES


def _check_marks(text: str, what: str) -> None:
    """Combining marks need a character to sit on, and at most MAX_MARKS_IN_A_ROW of them."""
    run = 0
    for index, char in enumerate(text):
        if not unicodedata.category(char).startswith("M"):
            run = 0
            continue
        if index == 0:
            raise InvalidInput(f"{what} cannot start with a combining mark (an accent alone).")
        run += 1
        if run > MAX_MARKS_IN_A_ROW:
            raise InvalidInput(
                f"At most {MAX_MARKS_IN_A_ROW} combining marks (accents) may sit on one "
                f"character in {what.lower()}."
            )


def clean_message(raw: str | None) -> str:
    """1 to MESSAGE_MAX code points after trimming, at least one visible; newlines kept
    (CRLF and CR become LF)."""
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
    if all(is_invisible(char) for char in text):
        raise InvalidInput("Write a message first: this one has no visible character.")
    _check_marks(text, "A message")
    return text


def clean_name(raw: str | None) -> str:
    """1 to NAME_MAX code points after NFKC normalisation and trimming, on one line, with a
    visible character and nothing invisible that could make two names look alike."""
    text = unicodedata.normalize("NFKC", raw or "").strip()
    if not text:
        raise InvalidInput("A name needs at least one character.")
    if len(text) > NAME_MAX:
        raise InvalidInput(f"Names can be at most {NAME_MAX} characters; this one has {len(text)}.")
    if any(char in _LINE_BREAKS for char in text):
        raise InvalidInput("A name must fit on one line.")
    _check_characters(text, allow_newlines=False)
    if any(char in _BLANKS or unicodedata.category(char) == "Cf" for char in text):
        raise InvalidInput(
            "A name cannot contain invisible characters (such as zero-width spaces or blank "
            "filler letters)."
        )
    if all(is_invisible(char) for char in text):
        raise InvalidInput("A name needs at least one visible character.")
    _check_marks(text, "A name")
    return text
