"""Pure pieces: configuration, the frame encoder, identity cookies, input validation."""

import uuid

import pytest

from app.config import DEV_SECRET, ConfigError, DatabaseUrl, Settings
from app.identity import Identity, decode, encode
from app.realtime import encode_frame
from app.realtime.events import Event, PayloadError
from app.web.params import first_cursor as parse_cursor
from app.web.validation import InvalidInput, clean_message, clean_name, parse_form


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


def test_identity_cookie_round_trips_and_rejects_tampering() -> None:
    key = b"k" * 32
    who = Identity(id=uuid.uuid4(), guest_name="Quiet Otter 12")
    value = encode(who, key)
    assert decode(value, key) == who
    body, _, sig = value.rpartition(".")
    other = str(uuid.uuid4()).replace("-", "")
    assert decode(f"v1.{other}.{body.split('.')[2]}.{sig}", key) is None
    assert decode(value, b"x" * 32) is None
    assert decode("garbage", key) is None
    assert decode(None, key) is None


def test_cursor_parsing_ignores_junk_and_prefers_the_header() -> None:
    assert parse_cursor("7", "3") == 7
    assert parse_cursor(None, "3") == 3
    assert parse_cursor("x", "3") == 3
    assert parse_cursor("-1", None) is None
    assert parse_cursor("9" * 19, None) is None
    assert parse_cursor("٣", None) is None  # a non-ASCII digit


def test_messages_are_trimmed_limited_and_keep_newlines() -> None:
    assert clean_message("  hi\r\nthere  ") == "hi\nthere"
    assert clean_message("é" * 280) == "é" * 280
    for bad, reason in [
        ("", "Write a message"),
        ("   \n ", "Write a message"),
        ("x" * 281, "at most 280"),
        ("a\x00b", "Control characters"),
        ("a\u202eb", "direction"),
    ]:
        with pytest.raises(InvalidInput, match=reason):
            clean_message(bad)


def test_names_are_one_line_and_limited() -> None:
    assert clean_name("  Ann  ") == "Ann"
    for bad in ["", " ", "a\nb", "x" * 41, "a\tb", "\u2066x"]:
        with pytest.raises(InvalidInput):
            clean_name(bad)


def test_forms_with_invalid_utf8_are_rejected() -> None:
    assert parse_form(b"message=caf%C3%A9") == {"message": "café"}
    with pytest.raises(InvalidInput, match="UTF-8"):
        parse_form(b"message=%ff%fe")
    assert parse_form("message=café".encode()) == {"message": "café"}
    with pytest.raises(InvalidInput, match="UTF-8"):
        parse_form(b"message=caf\xe9")
