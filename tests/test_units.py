"""Pure pieces, no server: configuration, payloads and frames, the signed identity cookie,
the cursor parser, input validation and the form decoder.

The property tests say what may come out for *any* input: a clean value that keeps the
invariants, or the one exception type the caller turns into a readable 4xx.
"""

import base64
import unicodedata
import uuid
from collections.abc import Callable
from typing import TypeVar
from urllib.parse import urlencode

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from support.sse_parse import FrameParser

from app import identity
from app.config import DEV_SECRET, ConfigError, DatabaseUrl, Settings
from app.models import MESSAGE_MAX, NAME_MAX
from app.realtime import encode_frame
from app.realtime.wireformat import Event, PayloadError
from app.web.params import first_cursor as parse_cursor
from app.web.validation import InvalidInput, clean_message, clean_name, parse_form

T = TypeVar("T")
R = TypeVar("R")
KEY = b"k" * 32
BIDI_OVERRIDES = "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
LINE_BREAKS = "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"

# Text that reaches the interesting branches often: controls, bidi, line breaks, astral.
tricky = st.text(
    alphabet=st.one_of(
        st.characters(codec="utf-8"),
        st.sampled_from(list(BIDI_OVERRIDES + LINE_BREAKS + "\t\x00\x7f\u200b\ufeff😀 ")),
    ),
    max_size=320,
)
FAST = settings(max_examples=300, deadline=None)


def _outcome(clean: Callable[[T], R], raw: T) -> tuple[R | None, str]:
    """What a validator returns, or the reason it refused (and no other exception)."""
    try:
        return clean(raw), ""
    except InvalidInput as error:
        return None, str(error)


def _allowed(char: str, *, newlines: bool) -> bool:
    if char == "\n":
        return newlines
    return char not in BIDI_OVERRIDES and unicodedata.category(char) not in {"Cc", "Cs"}


@FAST
@given(tricky)
@example("\r\n hi \r\n")
@example("x" * MESSAGE_MAX + "  ")
@example("😀" * MESSAGE_MAX)
def test_clean_message_keeps_its_invariants_or_says_why(raw: str) -> None:
    text, reason = _outcome(clean_message, raw)
    if text is None:
        assert reason  # a readable reason, shown to the visitor
        return
    assert 1 <= len(text) <= MESSAGE_MAX
    assert text == text.strip()
    assert "\r" not in text
    assert all(_allowed(c, newlines=True) for c in text)
    assert clean_message(text) == text  # idempotent: what is stored validates again


@FAST
@given(tricky)
@example("a\u2028b")
@example("  Ann  ")
def test_clean_name_keeps_its_invariants_or_says_why(raw: str) -> None:
    name, reason = _outcome(clean_name, raw)
    if name is None:
        assert reason
        return
    assert 1 <= len(name) <= NAME_MAX
    assert name == name.strip()
    assert len(name.splitlines()) == 1  # one line by every definition Python knows
    assert not set(name) & set(LINE_BREAKS)
    assert all(_allowed(c, newlines=False) for c in name)
    assert clean_name(name) == name


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("", "Write a message first"),
        (" \n\t\r\n ", "Write a message first"),
        ("x" * (MESSAGE_MAX + 1), f"at most {MESSAGE_MAX}"),
        ("😀" * (MESSAGE_MAX + 1), f"at most {MESSAGE_MAX}"),
        ("a\x00b", "Control characters"),
        ("a\tb", "Control characters"),
        ("\x1b[31mred", "Control characters"),
        ("a\x7fb", "Control characters"),
        ("evil\u202etxt.exe", "direction"),
        ("a\u2066b", "direction"),
    ],
)
def test_bad_messages_get_a_reason(raw: str, reason: str) -> None:
    with pytest.raises(InvalidInput, match=reason):
        clean_message(raw)


def test_message_limits_are_code_points_after_trimming_with_newlines_kept() -> None:
    assert clean_message("  " + "😀" * MESSAGE_MAX + "\r\n") == "😀" * MESSAGE_MAX
    assert clean_message("one\r\ntwo\rthree\nfour") == "one\ntwo\nthree\nfour"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("", "at least one"),
        ("   ", "at least one"),
        ("n" * (NAME_MAX + 1), f"at most {NAME_MAX}"),
        ("two\nlines", "one line"),
        ("two\u2028lines", "one line"),
        ("two\rlines", "one line"),
        ("tab\there", "Control characters"),
        ("\u202eevil", "direction"),
    ],
)
def test_bad_names_get_a_reason(raw: str, reason: str) -> None:
    with pytest.raises(InvalidInput, match=reason):
        clean_name(raw)


def test_name_limit_is_code_points() -> None:
    assert clean_name("😀" * NAME_MAX) == "😀" * NAME_MAX
    assert clean_name("  Ann  ") == "Ann"


@FAST
@given(st.binary(max_size=600))
@example(b"message=%ff")
@example(b"message=\xff")
@example(b"%")
@example(b"a=1&a=2&&=&b")
def test_parse_form_never_fails_any_other_way(body: bytes) -> None:
    form, reason = _outcome(parse_form, body)
    if form is None:
        assert "UTF-8" in reason
        return
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in form.items())


@FAST
@given(st.dictionaries(st.text(min_size=1, max_size=10), st.text(max_size=50), max_size=4))
def test_parse_form_reads_back_what_a_browser_encodes(fields: dict[str, str]) -> None:
    body = urlencode(fields, encoding="utf-8", errors="strict").encode()
    assert parse_form(body) == fields


@FAST
@given(st.text(max_size=400))
@example("v1." + "0" * 32 + ".QQ." + "é" * 43)
@example("v1..." + "x" * 400)
def test_identity_decode_takes_any_text_and_never_raises(value: str) -> None:
    assert identity.decode(value, KEY) is None


@FAST
@given(st.integers(min_value=0), st.text(min_size=1, max_size=1))
def test_any_one_character_change_to_a_cookie_is_refused(position: int, char: str) -> None:
    who = identity.new_identity()
    cookie = identity.encode(who, KEY)
    i = position % len(cookie)
    changed = cookie[:i] + char + cookie[i + 1 :]
    decoded = identity.decode(changed, KEY)
    assert decoded is None or changed == cookie
    assert identity.decode(cookie, KEY) == who


def test_a_cookie_cannot_be_moved_to_another_visitors_id() -> None:
    ann, bob = identity.new_identity(), identity.new_identity()
    _version, _ann_id, name, signature = identity.encode(ann, KEY).split(".")
    forged = f"v1.{bob.id.hex}.{name}.{signature}"
    assert identity.decode(forged, KEY) is None
    assert identity.decode(identity.encode(ann, b"other key" * 4), KEY) is None
    assert identity.decode(None, KEY) is None
    # Older keys verify (SECRET_KEY_FALLBACKS) and say they are not the current one.
    assert identity.verify(identity.encode(ann, KEY), [b"new" * 11, KEY]) == (ann, False)
    assert identity.verify(identity.encode(ann, KEY), [KEY]) == (ann, True)
    # A correctly signed cookie with a hand-made body still needs every part to parse.
    body = f"v1.{uuid.uuid4().hex}.{base64.urlsafe_b64encode(b'x').decode().rstrip('=')}"
    assert identity.decode(f"{body}.{identity._sign(KEY, body)}", KEY) is not None


header_text = st.text(alphabet=st.characters(max_codepoint=0xFF), max_size=40)


@FAST
@given(st.one_of(st.none(), header_text), st.one_of(st.none(), st.text(max_size=40)))
@example("9" * 18, None)
@example("9" * 19, "5")
@example("²", "3")
@example("-1", "+1")
@example("٣", None)
@example(" 7 ", "8")
def test_cursor_is_the_first_plain_number_or_ignored(header: str | None, query: str | None) -> None:
    cursor = parse_cursor(header, query)
    if _plain(header):
        assert cursor == int((header or "").strip())
    elif _plain(query):
        assert cursor == int((query or "").strip())
    else:
        assert cursor is None


def _plain(raw: str | None) -> bool:
    value = (raw or "").strip()
    return value.isascii() and value.isdigit() and len(value) <= 18


@FAST
@given(
    event=st.text(max_size=30),
    data=st.text(max_size=60),
    event_id=st.one_of(st.none(), st.integers(min_value=-(2**63), max_value=2**63)),
    retry_ms=st.one_of(st.none(), st.integers(min_value=0, max_value=10**9)),
)
@example(event="activity\n\nevent: counter", data="1", event_id=None, retry_ms=None)
@example(event="ping", data="x\rdata: injected", event_id=1, retry_ms=None)
@example(event="ping", data="\ud800", event_id=None, retry_ms=None)
@example(event=": comment", data=" leading space", event_id=None, retry_ms=1000)
def test_encode_frame_is_one_well_formed_event_or_a_value_error(
    event: str, data: str, event_id: int | None, retry_ms: int | None
) -> None:
    try:
        frame = encode_frame(event, data, event_id=event_id, retry_ms=retry_ms)
    except ValueError:
        # Refused: a line break (the only way to inject a field or a second event) or text
        # that has no UTF-8 form (a lone surrogate).
        assert any(c in part for part in (event, data) for c in "\r\n") or not all(
            _encodable(part) for part in (event, data)
        )
        return
    assert frame.endswith(b"\n\n")
    assert b"\r" not in frame
    assert frame.count(b"\n\n") == 1  # exactly one frame, ended once
    parser = FrameParser()
    events = parser.feed(frame.decode())
    assert len(events) == 1
    (got,) = events
    assert got.event == (event or "message")
    assert got.data == data
    assert got.id == (None if event_id is None else str(event_id))
    assert got.retry == retry_ms
    assert parser.comments == []


def _encodable(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


# -- configuration, payloads, frames ---------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        "postgres://u:p@db.example:5432/app?sslmode=require",
        "postgresql://u:p@db.example:5432/app?sslmode=require",
        "postgresql+asyncpg://u:p@db.example:5432/app?sslmode=require",
    ],
)
def test_database_urls_are_normalised_and_sslmode_translated(raw: str) -> None:
    url = DatabaseUrl.parse(raw)
    assert url.sqlalchemy_url == "postgresql+asyncpg://u:p@db.example:5432/app"
    assert url.asyncpg_dsn == "postgresql://u:p@db.example:5432/app"
    assert url.ssl == "require"


def test_provider_urls_with_libpq_only_options_are_accepted() -> None:
    url = DatabaseUrl.parse(
        "postgresql://u:p@ep-x.eu.aws.neon.tech/neondb?sslmode=require&channel_binding=require"
    )
    assert url.sqlalchemy_url == "postgresql+asyncpg://u:p@ep-x.eu.aws.neon.tech/neondb"
    assert url.ssl == "require"


def test_bad_database_urls_are_refused_clearly() -> None:
    with pytest.raises(ConfigError, match="scheme"):
        DatabaseUrl.parse("mysql://x/y")
    with pytest.raises(ConfigError, match="sslmode"):
        DatabaseUrl.parse("postgres://x/y?sslmode=sometimes")


def test_production_refuses_a_missing_short_or_development_secret_and_says_how() -> None:
    env = {"APP_ENV": "production", "DATABASE_URL": "postgres://x/y"}
    for secret in ["", "k", "x" * 31, DEV_SECRET]:
        with pytest.raises(ConfigError, match=r"SECRET_KEY.*secrets\.token_urlsafe"):
            Settings.from_env({**env, "SECRET_KEY": secret})
    assert Settings.from_env({**env, "SECRET_KEY": "k" * 32}).production
    # A weak fallback would let anyone sign cookies the app accepts.
    for old in [DEV_SECRET, "short"]:
        with pytest.raises(ConfigError, match="SECRET_KEY_FALLBACKS"):
            Settings.from_env({**env, "SECRET_KEY": "k" * 32, "SECRET_KEY_FALLBACKS": old})
    rotated = {**env, "SECRET_KEY": "k" * 32, "SECRET_KEY_FALLBACKS": "o" * 32}
    assert Settings.from_env(rotated).secret_key_fallbacks == ("o" * 32,)
    # Development accepts anything, the development key included.
    assert not Settings.from_env({**env, "APP_ENV": "development", "SECRET_KEY": "k"}).production


def test_secret_key_fallbacks_verify_but_never_sign() -> None:
    settings = Settings.from_env(
        {"DATABASE_URL": "postgres://x/y", "SECRET_KEY": "new", "SECRET_KEY_FALLBACKS": " a, ,b "}
    )
    assert settings.secret_key_fallbacks == ("a", "b")
    assert settings.verifying_keys[0] == settings.signing_key
    assert len(set(settings.verifying_keys)) == 3


def test_pooled_url_is_recognised_by_a_distinct_unpooled_url() -> None:
    same = Settings.from_env({"DATABASE_URL": "postgres://h/db"})
    assert not same.database_is_pooled
    split = Settings.from_env(
        {"DATABASE_URL": "postgres://pooler/db", "DATABASE_URL_UNPOOLED": "postgres://h/db"}
    )
    assert split.database_is_pooled
    assert split.listen_database.asyncpg_dsn == "postgresql://h/db"
    # The same server spelled another way is not a pooler (the statement cache stays on).
    spelled = Settings.from_env(
        {"DATABASE_URL": "postgres://h/db", "DATABASE_URL_UNPOOLED": "postgresql+asyncpg://h/db"}
    )
    assert not spelled.database_is_pooled


def test_frames_are_well_formed_and_refuse_line_breaks() -> None:
    assert encode_frame("activity", "42", event_id=42) == b"event: activity\nid: 42\ndata: 42\n\n"
    assert encode_frame("ping", "", retry_ms=1000) == b"retry: 1000\nevent: ping\ndata: \n\n"
    with pytest.raises(ValueError, match="line break"):
        encode_frame("activity", "1\n\ndata: injected")


def test_payloads_carry_ids_only() -> None:
    assert Event.from_payload("activity:12").activity_id == 12
    for bad in ["activity", "nope:1", "activity:<script>", "activity:" + "1" * 65]:
        with pytest.raises(PayloadError):
            Event.from_payload(bad)


def test_forms_decode_utf8_strictly_examples() -> None:
    assert parse_form(b"message=caf%C3%A9") == {"message": "café"}
    with pytest.raises(InvalidInput, match="UTF-8"):
        parse_form(b"message=%ff%fe")
    assert parse_form("message=café".encode()) == {"message": "café"}
    with pytest.raises(InvalidInput, match="UTF-8"):
        parse_form(b"message=caf\xe9")
