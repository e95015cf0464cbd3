"""A TCP proxy whose link can be cut: a network partition without closing any connection.

Killing or freezing a process closes sockets or leaves the kernel answering; a partition does
neither. ``cut()`` stops every byte in both directions while each connection stays open, as
when a switch drops packets; new connections are accepted and left waiting. ``heal()`` lets
everything through again, the held bytes first. ``reset_all()`` closes every connection
abruptly (RST) for the other kind of fault.

The proxy runs its own asyncio loop in a background thread, so synchronous tests and async
tests (on their own loop) can use it alike. Buffers are bounded: while cut, each direction of
a connection holds at most one read (``_CHUNK`` bytes) and stops reading, so the senders'
kernel buffers fill and TCP back-pressure stops them, as on a real link.
"""

import asyncio
import contextlib
import threading
from collections.abc import Coroutine
from typing import Any, Self

from .ports import free_port

_CHUNK = 64 * 1024


class _Link:
    """One client connection and, once the link lets it through, its upstream connection."""

    def __init__(self, client: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> None:
        self.client_reader, self.client_writer = client
        self.upstream_writer: asyncio.StreamWriter | None = None
        self.task: asyncio.Task[None] | None = None

    def abort(self) -> None:
        """Close both sides at once, with a reset rather than an orderly FIN."""
        for writer in (self.client_writer, self.upstream_writer):
            if writer is not None:
                writer.transport.abort()


class HoldingProxy:
    """Forward 127.0.0.1:``port`` to ``target_host``:``target_port``, with a link that can be cut.

    ``with HoldingProxy(host, port) as proxy:`` starts and stops it.
    """

    def __init__(self, target_host: str, target_port: int, *, host: str = "127.0.0.1") -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.host = host
        self.port = free_port(host)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tcpproxy", daemon=True)
        self._server: asyncio.Server | None = None
        self._flowing: asyncio.Event | None = None
        self._links: set[_Link] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    # -- control, from any thread ------------------------------------------------------------

    def start(self) -> Self:
        self._thread.start()
        self._call(self._start())
        return self

    def stop(self) -> None:
        """Close the listener and every connection, stop the loop and join its thread."""
        if not self._thread.is_alive():
            return
        try:
            self._call(self._stop())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            if not self._thread.is_alive():
                self._loop.close()

    def cut(self) -> None:
        """Stop forwarding in both directions; keep every connection open. Takes effect before
        returning (bytes already handed to the kernel may still arrive, like packets in flight).
        """
        self._call(self._set_flowing(False))

    def heal(self) -> None:
        """Forward again: the held bytes first, and connect the connections left waiting."""
        self._call(self._set_flowing(True))

    def reset_all(self) -> None:
        """Abort every connection (RST to both sides); the listener keeps accepting."""
        self._call(self._reset_all())

    @property
    def is_cut(self) -> bool:
        return self._flowing is not None and not self._flowing.is_set()

    @property
    def connection_count(self) -> int:
        """Client connections currently open through the proxy (waiting ones included)."""
        return len(self._links)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _call(self, coro: Coroutine[Any, Any, None], timeout: float = 10.0) -> None:
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    # -- the loop thread ---------------------------------------------------------------------

    async def _start(self) -> None:
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server = await asyncio.start_server(self._accept, self.host, self.port)

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
        await self._reset_all()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)

    async def _set_flowing(self, flowing: bool) -> None:
        assert self._flowing is not None
        if flowing:
            self._flowing.set()
        else:
            self._flowing.clear()

    async def _reset_all(self) -> None:
        for link in list(self._links):
            link.abort()
            if link.task is not None:
                link.task.cancel()  # it may be holding a close back until a heal

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        link = _Link((reader, writer))
        link.task = task
        self._links.add(link)
        try:
            await self._serve(link)
        except (OSError, asyncio.CancelledError):
            pass  # a reset, or reset_all/stop: the connection is over either way
        finally:
            link.abort()
            self._links.discard(link)
            self._tasks.discard(task)

    async def _serve(self, link: _Link) -> None:
        await self._wait_flowing()
        upstream_reader, upstream_writer = await asyncio.open_connection(
            self.target_host, self.target_port
        )
        link.upstream_writer = upstream_writer
        pumps = [
            asyncio.create_task(self._pump(link.client_reader, upstream_writer)),
            asyncio.create_task(self._pump(upstream_reader, link.client_writer)),
        ]
        try:
            done, _ = await asyncio.wait(pumps, return_when=asyncio.FIRST_EXCEPTION)
            for pump in done:
                pump.result()  # a reset on either side ends the connection
        finally:
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Copy one direction; hold (and stop reading) while cut; pass the FIN on at the end."""
        try:
            while data := await reader.read(_CHUNK):
                await self._wait_flowing()
                writer.write(data)
                await writer.drain()
            await self._wait_flowing()
            if writer.can_write_eof():
                writer.write_eof()
        except OSError:
            # One side reset: the reset crosses the link (once it carries anything again),
            # and both sides are torn down.
            await self._wait_flowing()
            with contextlib.suppress(OSError):
                writer.transport.abort()
            raise

    async def _wait_flowing(self) -> None:
        assert self._flowing is not None
        await self._flowing.wait()
