"""The SQLAlchemy engine and sessions for ordinary queries (never for LISTEN)."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
from sqlalchemy import event
from sqlalchemy.engine import ExceptionContext
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from app.config import DatabaseUrl, Settings

log = logging.getLogger("ripple.db")


def _unique_statement_name() -> str:
    return f"__ripple_{uuid.uuid4().hex}__"


def connect_args(
    url: DatabaseUrl,
    *,
    pooled: bool,
    connect_timeout: float | None = None,
    statement_timeout: float | None = None,
) -> dict[str, Any]:
    """asyncpg connect arguments; behind a transaction pooler, no statement cache.

    PgBouncer 1.18 in transaction mode hands each transaction to any server
    connection, so a prepared statement cached on one is unknown on the next.
    The timeouts (none by default, as migrations want) bound a connect and each statement
    on the client, so a database behind a partition cannot hold a request forever.
    """
    args: dict[str, Any] = {"server_settings": {"application_name": "ripple"}}
    if url.ssl is not None:
        args["ssl"] = url.ssl
    if connect_timeout is not None:
        args["timeout"] = connect_timeout
    if statement_timeout is not None:
        # Client-side, so it also works behind PgBouncer, which refuses a statement_timeout
        # startup parameter; it covers BEGIN and COMMIT as well as the statements.
        args["command_timeout"] = statement_timeout
    if pooled:
        args["statement_cache_size"] = 0
        args["prepared_statement_cache_size"] = 0
        args["prepared_statement_name_func"] = _unique_statement_name
    return args


def create_engine(settings: Settings) -> AsyncEngine:
    engine = create_async_engine(
        settings.database.sqlalchemy_url,
        connect_args=connect_args(
            settings.database,
            pooled=settings.database_is_pooled,
            connect_timeout=settings.db_connect_timeout_seconds,
            statement_timeout=settings.db_statement_timeout_seconds,
        ),
        # Per worker; with one LISTEN connection that is at most 17 connections to count
        # against the server's max_connections (or the pooler's) per worker. Opened on
        # demand and then kept: no overflow, because an overflow connection is closed on
        # return whenever the pool is full, and under steady concurrency above the pool
        # size that meant a new connection (a TLS attempt, a login) for many requests.
        pool_size=16,
        max_overflow=0,
        # A request waits this long for a free connection, then one connect or statement
        # timeout at most: together under the 10 s within which a request must answer.
        pool_timeout=settings.db_pool_timeout_seconds,
        # No pre-ping: with asyncpg it costs two round trips on every checkout. A connection
        # broken by a database restart fails one request, and SQLAlchemy then invalidates
        # every pooled connection older than that error.
        pool_recycle=1800,
    )
    if settings.database.needs_writable_host:
        discard_read_only_connections(engine)
    event.listen(engine.sync_engine, "handle_error", _discard_timed_out_connection)
    return engine


def reports_read_only(connection: asyncpg.Connection) -> bool:
    """Does the server say it is a hot standby, or read-only by default (fenced)?

    Both are reported to the client whenever they change (PostgreSQL 14+), so asyncpg
    already holds the latest values: no query needed.
    """
    settings = connection.get_settings()
    return any(
        getattr(settings, name, "off") == "on"
        for name in ("in_hot_standby", "default_transaction_read_only")
    )


# SQLSTATE 25006 read_only_sql_transaction: a write reached a standby or a fenced old primary.
_READ_ONLY_TRANSACTION = "25006"


def discard_read_only_connections(engine: AsyncEngine) -> None:
    """After a failover, keep no pooled connection to a host that can no longer write.

    target_session_attrs picks a read-write host only when a connection is opened; a
    pooled one outlives that choice. A connection whose server reports itself read-only
    (GUC_REPORT values asyncpg keeps: no round trip) is replaced at checkout, and a write
    refused as read-only counts as a disconnect, which discards every older pooled
    connection too, so the next connection goes to whichever host is now the primary.
    """

    @event.listens_for(engine.sync_engine.pool, "checkout")
    def _refuse_read_only(_dbapi: object, record: Any, _proxy: object) -> None:
        if reports_read_only(record.driver_connection):
            raise DisconnectionError("the database host reports itself read-only")

    @event.listens_for(engine.sync_engine, "handle_error")
    def _read_only_is_a_disconnect(context: ExceptionContext) -> None:
        if getattr(context.original_exception, "sqlstate", None) == _READ_ONLY_TRANSACTION:
            context.is_disconnect = True


def _discard_timed_out_connection(context: ExceptionContext) -> None:
    """A statement that timed out (or was cancelled) leaves its connection unusable: close
    it at once.

    On a timeout asyncpg sends a cancel request over a new connection and makes the next
    statement (SQLAlchemy's ROLLBACK) wait for it; across a partition that connect hangs
    too, which would double the wait, and a connection whose cancel failed is broken. A
    cancelled task's connection is discarded by SQLAlchemy anyway, but after a goodbye that
    waits for that same cancel request (up to 2 s). So the connection is closed without a
    goodbye and SQLAlchemy discards it from the pool (the other pooled connections are left
    alone: one slow statement says nothing about them).
    """
    if not isinstance(context.original_exception, (TimeoutError, asyncio.CancelledError)):
        return
    connection = context.connection
    if connection is None or connection.invalidated or connection.closed:
        return
    driver_connection = connection.connection.driver_connection
    if driver_connection is not None:
        driver_connection.terminate()
    context.is_disconnect = True
    context.invalidate_pool_on_disconnect = False


def open_database(settings: Settings) -> Database:
    return Database(create_engine(settings), pooled=settings.database_is_pooled)


class Database:
    """Owns the engine; hands out short sessions: one transaction, or autocommit."""

    def __init__(self, engine: AsyncEngine, *, pooled: bool = False) -> None:
        self.engine = engine
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)
        # Behind a transaction pooler a statement outside a transaction may be parsed on one
        # server connection and executed on another: there, keep the explicit transaction.
        self._pooled = pooled
        self._autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """One transaction: committed on success, rolled back on any error."""
        async with self._sessions.begin() as session:
            yield session

    @asynccontextmanager
    async def autocommit(self) -> AsyncIterator[AsyncConnection]:
        """A Core connection where each statement is its own transaction (no BEGIN/COMMIT
        round trips, no ORM bookkeeping): for the hot reads, and for writes that are one
        statement (a NOTIFY in that statement is delivered only if the statement commits).
        """
        if self._pooled:
            async with self.engine.begin() as connection:
                yield connection
        else:
            async with self._autocommit.connect() as connection:
                yield connection

    async def dispose(self, timeout: float = 3.0) -> None:
        """Close the pooled connections, giving up after `timeout` seconds.

        Each close says goodbye and waits for the server's answer (up to the statement
        timeout), one connection after the other: behind a partition that would hold a
        shutdown for 16 x 5 s. What is still open then is dropped when the process exits.
        """
        try:
            await asyncio.wait_for(self.engine.dispose(), timeout)
        except TimeoutError:
            log.warning("database connections not closed within %s s: dropped", timeout)
