"""Settings read once from the environment, validated and normalised."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, TypeVar, cast, get_args
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

NOTIFY_CHANNEL = "ripple"  # the one LISTEN/NOTIFY channel every instance shares
DEV_SECRET = "ripple-development-secret"  # noqa: S105 - refused in production below

# sslmode values libpq understands; asyncpg takes the same words through `ssl=`.
SslMode = Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]
_SSLMODES: frozenset[str] = frozenset(get_args(SslMode))
# libpq options providers put in their URLs that asyncpg does not take. channel_binding:
# asyncpg negotiates SCRAM by itself; connect_timeout: the app sets its own timeouts.
_LIBPQ_ONLY = ("channel_binding", "connect_timeout")


class ConfigError(ValueError):
    """The environment does not describe a runnable configuration."""


@dataclass(frozen=True, slots=True)
class DatabaseUrl:
    """A PostgreSQL URL split into what asyncpg and SQLAlchemy each need."""

    sqlalchemy_url: str  # postgresql+asyncpg://..., without query parameters asyncpg rejects
    asyncpg_dsn: str  # postgresql://..., accepted by asyncpg.connect()
    ssl: SslMode | None  # the sslmode, passed to asyncpg as `ssl=`

    @classmethod
    def parse(cls, raw: str) -> DatabaseUrl:
        """Accept postgres://, postgresql:// and postgresql+asyncpg:// with ?sslmode=."""
        parts = urlsplit(raw.strip())
        scheme = parts.scheme.lower()
        if scheme not in {"postgres", "postgresql", "postgresql+asyncpg"}:
            raise ConfigError(
                f"database URL scheme {parts.scheme!r} is not PostgreSQL "
                "(use postgres://, postgresql:// or postgresql+asyncpg://)"
            )
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        ssl = query.pop("sslmode", None) or query.pop("ssl", None)
        if ssl is not None and ssl not in _SSLMODES:
            raise ConfigError(f"sslmode {ssl!r} is not one of {sorted(_SSLMODES)}")
        for name in _LIBPQ_ONLY:  # asyncpg has no such option and would refuse the URL
            query.pop(name, None)
        rest = urlencode(query)
        sqlalchemy_url = urlunsplit(
            ("postgresql+asyncpg", parts.netloc, parts.path, rest, parts.fragment)
        )
        asyncpg_dsn = urlunsplit(("postgresql", parts.netloc, parts.path, rest, parts.fragment))
        return cls(
            sqlalchemy_url=sqlalchemy_url, asyncpg_dsn=asyncpg_dsn, ssl=cast(SslMode | None, ssl)
        )

    @property
    def database(self) -> str:
        return urlsplit(self.asyncpg_dsn).path.lstrip("/")


Number = TypeVar("Number", int, float)


def _number(env: Mapping[str, str], name: str, default: Number, minimum: Number) -> Number:
    """A numeric variable of the type of its default, at least `minimum`."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    kind = type(default)
    try:
        value = kind(raw)
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise ConfigError(f"{name} must be {what}, got {raw!r}") from None
    if not value >= minimum:  # also refuses NaN
        raise ConfigError(f"{name} must be at least {minimum}, got {value}")
    return value


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    return _number(env, name, default, minimum)


def _float(env: Mapping[str, str], name: str, default: float, minimum: float = 0.0) -> float:
    return _number(env, name, float(default), float(minimum))


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the app reads from its environment (see README, Configuration)."""

    database: DatabaseUrl
    listen_database: DatabaseUrl
    database_is_pooled: bool
    secret_key: str
    production: bool = False
    port: int = 8000
    web_concurrency: int = 2
    rate_limit_per_minute: int = 30
    max_streams_per_client: int = 32
    max_streams_per_worker: int = 10_000
    forwarded_allow_ips: str = "127.0.0.1"
    instance_id: str = "local"
    # Tuning knobs (README): tests shorten them.
    ping_seconds: float = 15.0
    heartbeat_seconds: float = 5.0
    presence_expiry_seconds: float = 45.0
    presence_grace_seconds: float = 10.0
    listener_check_seconds: float = 5.0
    send_timeout_seconds: float = 30.0
    # How long a database that stops answering (a partition, not a refusal) may hold a request:
    # a pool wait plus one connect or statement stays under the contract's 10 s (README).
    db_connect_timeout_seconds: float = 5.0
    db_statement_timeout_seconds: float = 5.0
    db_pool_timeout_seconds: float = 3.0
    listener_check_timeout_seconds: float = 2.0
    stream_silence_seconds: float = 35.0

    @property
    def signing_key(self) -> bytes:
        """A fixed-length key derived from SECRET_KEY of any length."""
        return hashlib.sha256(b"ripple-signing:" + self.secret_key.encode()).digest()

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        app_env = env.get("APP_ENV", "development").strip().lower() or "development"
        if app_env not in {"development", "production"}:
            raise ConfigError(f"APP_ENV must be 'development' or 'production', got {app_env!r}")
        production = app_env == "production"
        secret = env.get("SECRET_KEY", "")
        if not secret:
            if production:
                raise ConfigError(
                    "SECRET_KEY is not set: refusing to start with APP_ENV=production. "
                    "Set SECRET_KEY to a long random string."
                )
            secret = DEV_SECRET
        raw_url = env.get("DATABASE_URL", "").strip()
        if not raw_url:
            raise ConfigError(
                "DATABASE_URL is not set (run through `python -m app serve`, which starts "
                "an embedded PostgreSQL for development when it is unset)"
            )
        raw_unpooled = env.get("DATABASE_URL_UNPOOLED", "").strip() or raw_url
        return cls(
            database=DatabaseUrl.parse(raw_url),
            listen_database=DatabaseUrl.parse(raw_unpooled),
            # A distinct unpooled URL means DATABASE_URL may be a transaction pooler:
            # then no server-side prepared statements may outlive a transaction.
            database_is_pooled=raw_unpooled != raw_url,
            secret_key=secret,
            production=production,
            port=_int(env, "PORT", 8000, 1),
            web_concurrency=_int(env, "WEB_CONCURRENCY", 2, 1),
            rate_limit_per_minute=_int(env, "RATE_LIMIT_PER_MINUTE", 30),
            max_streams_per_client=_int(env, "MAX_STREAMS_PER_CLIENT", 32),
            max_streams_per_worker=_int(env, "MAX_STREAMS_PER_WORKER", 10_000, 1),
            forwarded_allow_ips=env.get("FORWARDED_ALLOW_IPS", "127.0.0.1"),
            instance_id=env.get("RIPPLE_INSTANCE_ID", "local"),
            ping_seconds=_float(env, "RIPPLE_PING_SECONDS", 15.0, 0.1),
            heartbeat_seconds=_float(env, "RIPPLE_HEARTBEAT_SECONDS", 5.0, 0.1),
            presence_expiry_seconds=_float(env, "RIPPLE_PRESENCE_EXPIRY_SECONDS", 45.0, 0.5),
            presence_grace_seconds=_float(env, "RIPPLE_PRESENCE_GRACE_SECONDS", 10.0, 0.0),
            listener_check_seconds=_float(env, "RIPPLE_LISTENER_CHECK_SECONDS", 5.0, 0.1),
            send_timeout_seconds=_float(env, "RIPPLE_SEND_TIMEOUT_SECONDS", 30.0, 0.5),
            db_connect_timeout_seconds=_float(env, "RIPPLE_DB_CONNECT_TIMEOUT_SECONDS", 5.0, 0.1),
            db_statement_timeout_seconds=_float(
                env, "RIPPLE_DB_STATEMENT_TIMEOUT_SECONDS", 5.0, 0.1
            ),
            db_pool_timeout_seconds=_float(env, "RIPPLE_DB_POOL_TIMEOUT_SECONDS", 3.0, 0.1),
            listener_check_timeout_seconds=_float(
                env, "RIPPLE_LISTENER_CHECK_TIMEOUT_SECONDS", 2.0, 0.1
            ),
            stream_silence_seconds=_float(env, "RIPPLE_STREAM_SILENCE_SECONDS", 35.0, 1.0),
        )
