"""Settings read once from the environment, validated and normalised."""

from __future__ import annotations

import functools
import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, TypeVar, cast, get_args
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

NOTIFY_CHANNEL = "ripple"  # the one LISTEN/NOTIFY channel every instance shares
DEV_SECRET = "ripple-development-secret"  # noqa: S105 - refused in production below
MIN_SECRET_LENGTH = 32
MAKE_A_SECRET = "python -c 'import secrets; print(secrets.token_urlsafe(48))'"  # noqa: S105

# sslmode values libpq understands; asyncpg takes the same words through `ssl=`.
SslMode = Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]
_SSLMODES: frozenset[str] = frozenset(get_args(SslMode))
# libpq options providers put in their URLs that asyncpg does not take. channel_binding:
# asyncpg negotiates SCRAM by itself; connect_timeout: the app sets its own timeouts.
_LIBPQ_ONLY = ("channel_binding", "connect_timeout")


class ConfigError(ValueError):
    """The environment does not describe a runnable configuration."""


# target_session_attrs values asyncpg (like libpq) understands; the app writes on every
# connection, so it refuses the ones that would pick a standby.
_SESSION_TARGETS = frozenset({"any", "read-write", "primary"})
_STANDBY_TARGETS = frozenset({"read-only", "standby", "prefer-standby"})
_HOSTSPEC = re.compile(r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<name>[^:/\[\],]+))(?::(?P<port>\d*))?$")
DEFAULT_PORT = 5432


@dataclass(frozen=True, slots=True)
class DatabaseUrl:
    """A PostgreSQL URL split into what asyncpg and SQLAlchemy each need."""

    sqlalchemy_url: str  # postgresql+asyncpg://..., without query parameters asyncpg rejects
    asyncpg_dsn: str  # postgresql://..., accepted by asyncpg.connect()
    ssl: SslMode | None  # the sslmode, passed to asyncpg as `ssl=`
    # "read-write" or "primary": a connection to a host that is no longer one is useless.
    target_session_attrs: str | None = None

    @classmethod
    def parse(cls, raw: str) -> DatabaseUrl:
        """Accept postgres://, postgresql:// and postgresql+asyncpg:// with ?sslmode=.

        Several hosts may be given as ``h1:5432,h2:5433`` or ``?host=h1:5432&host=h2:5433``
        (or ``?host=h1,h2&port=5432,5433``). SQLAlchemy parses only the query form and
        asyncpg keeps only the last repeated ``host=``, so each gets its own spelling.
        With several hosts and no ``target_session_attrs``, ``read-write`` is assumed.
        """
        parts = urlsplit(raw.strip())
        scheme = parts.scheme.lower()
        if scheme not in {"postgres", "postgresql", "postgresql+asyncpg"}:
            raise ConfigError(
                f"database URL scheme {parts.scheme!r} is not PostgreSQL "
                "(use postgres://, postgresql:// or postgresql+asyncpg://)"
            )
        pairs = parse_qsl(parts.query, keep_blank_values=True)
        query = dict(pairs)
        ssl = query.pop("sslmode", None) or query.pop("ssl", None)
        if ssl is not None and ssl not in _SSLMODES:
            raise ConfigError(f"sslmode {ssl!r} is not one of {sorted(_SSLMODES)}")
        for name in _LIBPQ_ONLY:  # asyncpg has no such option and would refuse the URL
            query.pop(name, None)
        userinfo, at, hostspec = parts.netloc.rpartition("@")
        hosts = _host_list(hostspec, [v for k, v in pairs if k == "host"], query.get("port"))
        target = query.get("target_session_attrs")
        if target is None and len(hosts) > 1:
            target = query["target_session_attrs"] = "read-write"
        if target in _STANDBY_TARGETS:
            raise ConfigError(
                f"target_session_attrs={target} would connect to a standby, where writes and "
                "LISTEN fail: use read-write (or primary)"
            )
        if target is not None and target not in _SESSION_TARGETS:
            raise ConfigError(
                f"target_session_attrs {target!r} is not one of {sorted(_SESSION_TARGETS)}"
            )
        if len(hosts) > 1:
            query.pop("host", None)
            query.pop("port", None)
            auth = userinfo + at
            names = ",".join(name for name, _ in hosts)
            ports = ",".join(str(port) for _, port in hosts)
            rest = urlencode({"host": names, "port": ports, **query}, safe=",:")
            sqlalchemy_url = urlunsplit(("postgresql+asyncpg", auth, parts.path, rest, ""))
            netloc = auth + ",".join(f"{_bracketed(name)}:{port}" for name, port in hosts)
            rest = urlencode(query)
            asyncpg_dsn = urlunsplit(("postgresql", netloc, parts.path, rest, ""))
        else:
            rest = urlencode(query)
            sqlalchemy_url = urlunsplit(
                ("postgresql+asyncpg", parts.netloc, parts.path, rest, parts.fragment)
            )
            asyncpg_dsn = urlunsplit(("postgresql", parts.netloc, parts.path, rest, parts.fragment))
        return cls(
            sqlalchemy_url=sqlalchemy_url,
            asyncpg_dsn=asyncpg_dsn,
            ssl=cast(SslMode | None, ssl),
            target_session_attrs=target,
        )

    @property
    def database(self) -> str:
        return urlsplit(self.asyncpg_dsn).path.lstrip("/")

    @property
    def needs_writable_host(self) -> bool:
        """Must every connection be to a read-write primary (target_session_attrs)?"""
        return self.target_session_attrs in {"read-write", "primary"}


def _host_list(
    authority: str, query_hosts: list[str], query_ports: str | None
) -> list[tuple[str, int]]:
    """Every (host, port) the URL names, in order; one entry or none for a single host."""
    if authority and query_hosts:
        raise ConfigError("give the database hosts either before the path or as ?host=, not both")
    specs = authority.split(",") if authority else [h for q in query_hosts for h in q.split(",")]
    if len(specs) <= 1:
        return []  # one host (or a socket directory): the URL is used as written
    ports = query_ports.split(",") if query_ports else []
    if len(ports) not in (0, 1, len(specs)):
        raise ConfigError(f"{len(specs)} database hosts but {len(ports)} ports in ?port=")
    hosts = []
    for index, spec in enumerate(specs):
        match = _HOSTSPEC.match(spec.strip())
        if match is None:
            raise ConfigError(
                f"database host {spec!r} is not host, host:port or [ipv6]:port "
                "(several hosts must be network addresses)"
            )
        port = match["port"] or (ports[index if len(ports) > 1 else 0] if ports else "")
        if match["port"] and ports:
            raise ConfigError("give each database host's port either as host:port or ?port=")
        try:
            number = int(port) if port else DEFAULT_PORT
        except ValueError:
            raise ConfigError(f"database port {port!r} is not a number") from None
        if not 0 < number < 65536:
            raise ConfigError(f"database port {number} is out of range")
        hosts.append((unquote(match["v6"] or match["name"]), number))
    return hosts


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host else host


@functools.cache  # asked on every request that reads a cookie: derive each key once
def _derive(secret: str) -> bytes:
    return hashlib.sha256(b"ripple-signing:" + secret.encode()).digest()


def _check_production_secret(secret: str, name: str) -> None:
    """Production refuses the development key and short keys, and says how to make one."""
    if secret == DEV_SECRET:
        problem = "is not set, or is the development key,"
    elif len(secret) < MIN_SECRET_LENGTH:
        problem = f"is {len(secret)} characters long; at least {MIN_SECRET_LENGTH} are needed"
    else:
        return
    raise ConfigError(
        f"{name} {problem}: refusing to start with APP_ENV=production. "
        f"Make one with: {MAKE_A_SECRET}"
    )


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
    secret_key_fallbacks: tuple[str, ...] = ()
    production: bool = False
    port: int = 8000
    web_concurrency: int = 2
    rate_limit_per_minute: int = 30
    max_streams_per_client: int = 32
    max_streams_per_worker: int = 10_000
    forwarded_allow_ips: str = "127.0.0.1"
    proxy_hops: int = 1
    metrics_token: str = ""
    instance_id: str = "local"
    # Tuning knobs (README): tests shorten them.
    ping_seconds: float = 15.0
    heartbeat_seconds: float = 5.0
    presence_expiry_seconds: float = 45.0
    presence_grace_seconds: float = 10.0
    listener_check_seconds: float = 5.0
    send_timeout_seconds: float = 30.0
    # The HTTP protocol's edge limits (app/httpprotocol.py): the request line plus headers
    # of one request, and how long they may take to arrive.
    max_header_bytes: int = 32_768
    header_timeout_seconds: float = 30.0
    # How long a database that stops answering (a partition, not a refusal) may hold a request:
    # a pool wait plus one connect or statement stays under the contract's 10 s (README).
    db_connect_timeout_seconds: float = 5.0
    db_statement_timeout_seconds: float = 5.0
    db_pool_timeout_seconds: float = 3.0
    listener_check_timeout_seconds: float = 2.0
    stream_silence_seconds: float = 35.0

    @property
    def signing_key(self) -> bytes:
        """The key that signs: derived from SECRET_KEY (any length gives a fixed-length key)."""
        return _derive(self.secret_key)

    @property
    def verifying_keys(self) -> tuple[bytes, ...]:
        """Keys that verify, newest first: SECRET_KEY, then SECRET_KEY_FALLBACKS."""
        return (self.signing_key, *(_derive(old) for old in self.secret_key_fallbacks))

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        app_env = env.get("APP_ENV", "development").strip().lower() or "development"
        if app_env not in {"development", "production"}:
            raise ConfigError(f"APP_ENV must be 'development' or 'production', got {app_env!r}")
        production = app_env == "production"
        secret = env.get("SECRET_KEY", "") or DEV_SECRET
        if production:
            _check_production_secret(secret, "SECRET_KEY")
        fallbacks = tuple(
            key.strip() for key in env.get("SECRET_KEY_FALLBACKS", "").split(",") if key.strip()
        )
        if production:  # a weak old key still verifies: it would let anyone sign cookies
            for old in fallbacks:
                _check_production_secret(old, "each of SECRET_KEY_FALLBACKS")
        raw_url = env.get("DATABASE_URL", "").strip()
        if not raw_url:
            raise ConfigError(
                "DATABASE_URL is not set (run through `python -m app serve`, which starts "
                "an embedded PostgreSQL for development when it is unset)"
            )
        database = DatabaseUrl.parse(raw_url)
        raw_unpooled = env.get("DATABASE_URL_UNPOOLED", "").strip()
        listen_database = DatabaseUrl.parse(raw_unpooled) if raw_unpooled else database
        return cls(
            database=database,
            listen_database=listen_database,
            # A distinct unpooled URL means DATABASE_URL may be a transaction pooler:
            # then no server-side prepared statements may outlive a transaction. Compared
            # parsed, so the same server spelled two ways is not taken for a pooler.
            database_is_pooled=listen_database != database,
            secret_key=secret,
            secret_key_fallbacks=fallbacks,
            production=production,
            port=_int(env, "PORT", 8000, 1),
            web_concurrency=_int(env, "WEB_CONCURRENCY", 2, 1),
            rate_limit_per_minute=_int(env, "RATE_LIMIT_PER_MINUTE", 30),
            max_streams_per_client=_int(env, "MAX_STREAMS_PER_CLIENT", 32),
            max_streams_per_worker=_int(env, "MAX_STREAMS_PER_WORKER", 10_000, 1),
            forwarded_allow_ips=env.get("FORWARDED_ALLOW_IPS", "127.0.0.1"),
            proxy_hops=_int(env, "PROXY_HOPS", 1, 1),
            metrics_token=env.get("METRICS_TOKEN", "").strip(),
            instance_id=env.get("RIPPLE_INSTANCE_ID", "local"),
            ping_seconds=_float(env, "RIPPLE_PING_SECONDS", 15.0, 0.1),
            heartbeat_seconds=_float(env, "RIPPLE_HEARTBEAT_SECONDS", 5.0, 0.1),
            presence_expiry_seconds=_float(env, "RIPPLE_PRESENCE_EXPIRY_SECONDS", 45.0, 0.5),
            presence_grace_seconds=_float(env, "RIPPLE_PRESENCE_GRACE_SECONDS", 10.0, 0.0),
            listener_check_seconds=_float(env, "RIPPLE_LISTENER_CHECK_SECONDS", 5.0, 0.1),
            send_timeout_seconds=_float(env, "RIPPLE_SEND_TIMEOUT_SECONDS", 30.0, 0.5),
            max_header_bytes=_int(env, "RIPPLE_MAX_HEADER_BYTES", 32_768, 1024),
            header_timeout_seconds=_float(env, "RIPPLE_HEADER_TIMEOUT_SECONDS", 30.0, 0.5),
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
