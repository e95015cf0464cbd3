"""The worker's one LISTEN connection: keepalive, health checks, reconnect, resync.

It is a plain asyncpg connection on DATABASE_URL_UNPOOLED, outside any pool (a pool
would recycle it; a transaction pooler cannot hold LISTEN). It never opens a
transaction, so it cannot hold back PostgreSQL's notification queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
import socket
from collections.abc import Awaitable, Callable

import asyncpg

from app import metrics
from app.config import DatabaseUrl
from app.db import reports_read_only
from app.realtime.wireformat import CHANNEL, Event, PayloadError

log = logging.getLogger("ripple.listener")

PROBE_PREFIX = "probe:"
# What a failed connect may raise; TargetServerAttributeNotMatched: every host answered,
# none is read-write (mid-failover: the old primary fenced, the standby not promoted yet).
_CONNECT_ERRORS = (
    OSError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.TargetServerAttributeNotMatched,
    TimeoutError,
)


class ListenerUnusable(RuntimeError):
    """LISTEN 'succeeded' but a NOTIFY never arrived: the URL goes through a transaction pooler."""


def _enable_tcp_keepalive(connection: asyncpg.Connection) -> None:
    """Let the kernel notice a dead peer even when nothing is being sent.

    asyncpg has no keepalive option, so set it on the connection's socket.
    """
    transport = getattr(connection, "_transport", None)
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (("TCP_KEEPIDLE", 10), ("TCP_KEEPINTVL", 5), ("TCP_KEEPCNT", 3)):
        option = getattr(socket, name, None)
        if option is not None:
            sock.setsockopt(socket.IPPROTO_TCP, option, value)


class Listener:
    """Keeps one LISTEN connection up and feeds what arrives to `deliver`."""

    def __init__(
        self,
        url: DatabaseUrl,
        deliver: Callable[[Event], None],
        *,
        check_interval: float = 5.0,
        check_timeout: float = 2.0,
        send_probe: Callable[[str], Awaitable[None]] | None = None,
        on_state: Callable[[bool], Awaitable[None]] | None = None,
        on_reconnect: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._url = url
        self._deliver = deliver
        self._check_interval = check_interval
        self._check_timeout = check_timeout
        self._send_probe = send_probe
        self._on_state = on_state
        self._on_reconnect = on_reconnect
        self._conn: asyncpg.Connection | None = None
        self._lost = asyncio.Event()
        self._probes: dict[str, asyncio.Future[None]] = {}
        self._task: asyncio.Task[None] | None = None
        self.connected = False
        self.backend_pid: int | None = None

    # -- receiving -------------------------------------------------------------------

    def _on_notification(self, _conn: object, _pid: int, _channel: str, payload: object) -> None:
        if not isinstance(payload, str):
            return
        if payload.startswith(PROBE_PREFIX):
            probe = self._probes.get(payload[len(PROBE_PREFIX) :])
            if probe is not None and not probe.done():
                probe.set_result(None)
            return
        try:
            event = Event.from_payload(payload)
        except PayloadError:
            log.warning("listener ignored a malformed payload (%d bytes)", len(payload))
            return
        self._deliver(event)

    # -- connecting ------------------------------------------------------------------

    async def _connect(self) -> asyncpg.Connection:
        conn: asyncpg.Connection = await asyncpg.connect(
            self._url.asyncpg_dsn,
            ssl=self._url.ssl,
            timeout=5,
            statement_cache_size=0,
            server_settings={"application_name": "ripple-listener"},
        )
        # One event per connection: asyncpg reports a termination with call_soon, so a
        # shared event could be set by the old connection after the new one was opened.
        lost = asyncio.Event()
        try:
            _enable_tcp_keepalive(conn)
            conn.add_termination_listener(lambda _conn: lost.set())
            await conn.add_listener(CHANNEL, self._on_notification)
            self.backend_pid = conn.get_server_pid()
        except BaseException:
            conn.terminate()
            raise
        self._lost = lost
        return conn

    async def _verify_round_trip(self, timeout: float = 5.0) -> None:
        """A NOTIFY sent from another connection must arrive here."""
        if self._send_probe is None:
            return
        token = secrets.token_hex(8)
        arrived = asyncio.get_running_loop().create_future()
        self._probes[token] = arrived
        try:
            await self._send_probe(PROBE_PREFIX + token)
            await asyncio.wait_for(arrived, timeout)
        except TimeoutError:
            raise ListenerUnusable(
                "LISTEN connection receives no notifications: DATABASE_URL_UNPOOLED must be a "
                "direct (session) connection to PostgreSQL, not a transaction pooler such as "
                "PgBouncer in transaction mode or a provider's pooled URL"
            ) from None
        finally:
            self._probes.pop(token, None)

    async def start(self) -> None:
        """Connect and verify once (refusing an unusable URL), then keep it up in the background."""
        try:
            self._conn = await self._connect()
        except _CONNECT_ERRORS as exc:
            log.warning("listener state=down reason=%s", type(exc).__name__)
        else:
            try:
                await self._verify_round_trip()
            except BaseException:
                self._conn.terminate()
                self._conn = None
                raise
            await self._set_state(True)
        self._task = asyncio.create_task(self._supervise(), name="ripple-listener")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._conn.close(), 2)
            self._conn = None
        self.connected = False

    async def _set_state(self, connected: bool) -> None:
        if connected == self.connected:
            return
        self.connected = connected
        metrics.LISTENER_CONNECTED.set(1 if connected else 0)
        log.info(
            "listener state=%s backend_pid=%s", "up" if connected else "down", self.backend_pid
        )
        if self._on_state is not None:
            try:
                await self._on_state(connected)
            except Exception as exc:  # the database may be down: reported by /healthz anyway
                log.warning("listener state report failed: %s", type(exc).__name__)

    # -- staying up ------------------------------------------------------------------

    async def _healthy(self) -> bool:
        """Wait one check interval; False as soon as the connection is known or found dead."""
        conn = self._conn
        if conn is None or conn.is_closed():
            return False
        try:
            await asyncio.wait_for(self._lost.wait(), self._check_interval)
            return False  # terminated
        except TimeoutError:
            pass
        try:
            # A half-open connection (a partition) raises nothing: only an unanswered query
            # shows it. asyncpg's own timeout, not a task cancellation; the cancel request it
            # then sends is dropped when _supervise terminates the connection.
            await conn.fetchval("SELECT 1", timeout=self._check_timeout)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
            return False
        return True

    def _on_writable_host(self) -> bool:
        """False once a URL that asks for a read-write host finds this one read-only.

        NOTIFYs are sent where writes go: a listener left on a fenced old primary would
        hear nothing again. Reconnecting lets target_session_attrs pick the new primary.
        """
        if self._conn is None or not self._url.needs_writable_host:
            return True
        if reports_read_only(self._conn):
            log.warning("listener host became read-only: reconnecting to a read-write host")
            return False
        return True

    async def _supervise(self) -> None:
        attempt = 0
        while True:
            if self._conn is not None and await self._healthy() and self._on_writable_host():
                attempt = 0  # only a connection that passed a check resets the backoff
                continue
            await self._set_state(False)
            if self._conn is not None:
                self._conn.terminate()
                self._conn = None
            delay = min(5.0, 0.25 * 2**attempt) * random.uniform(0.5, 1.5)
            await asyncio.sleep(delay if attempt else random.uniform(0.05, 0.25))
            attempt += 1
            try:
                self._conn = await self._connect()
            except _CONNECT_ERRORS as exc:
                log.info(
                    "listener reconnect failed attempt=%d reason=%s", attempt, type(exc).__name__
                )
                continue
            metrics.LISTENER_RECONNECTS.inc()
            await self._set_state(True)
            # Postgres does not replay what was sent while we were away: everyone re-reads.
            if self._on_reconnect is not None:
                try:
                    await self._on_reconnect()
                except Exception as exc:
                    log.warning("listener resync failed: %s", type(exc).__name__)
