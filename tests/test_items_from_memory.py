"""Feed items answered from a worker's memory, against a real server.

Three ways answer an item: Litestar's handler (the first ask renders it), the front door
ahead of Litestar, and the HTTP protocol itself with no ASGI cycle (app.httpprotocol). All
three must give the same answer; the protocol's must keep HTTP/1.1's order and keep-alive
rules when requests are pipelined; and a new item is read and rendered once per worker when
its notification arrives, before the pages ask for it.
"""

import asyncio
import contextlib
import socket
import time
from collections.abc import Callable

import httpx
import psutil
from support.probes import eventually, metric
from support.rawconn import RawConnection
from support.server import AppServer
from support.sse import SSEClient
from support.visitors import Visitor

AppServerFactory = Callable[..., AppServer]
IN_PROTOCOL = "ripple_item_answers_in_protocol_total"
WARMED = "ripple_items_warmed_total"
HTML = {"accept": "text/html", "hx-request": "true"}
IGNORED = {"date", "set-cookie"}


def _comparable(response: httpx.Response) -> dict[str, str]:
    return {k: v for k, v in response.headers.items() if k not in IGNORED}


async def _new_item(visitor: Visitor, text: str) -> int:
    item_id: int = (await visitor.post(text)).json()["id"]  # JSON: nothing rendered yet
    return item_id


async def test_every_way_in_gives_the_same_answer(app_server: AppServerFactory) -> None:
    server = await asyncio.to_thread(app_server, workers=1)
    base = server.base_url
    async with await Visitor.arrive(base) as visitor:
        path = f"/fragments/activity/{await _new_item(visitor, 'said <thrice>')}"
        before = await metric(base, IN_PROTOCOL)
        handler = await visitor.get(path, headers=HTML)  # not cached yet: Litestar renders
        protocol = await visitor.get(path, headers=HTML)  # cached: the protocol answers
        door = await visitor.get(path + "?from=door", headers=HTML)  # a query: the front door
        assert await metric(base, IN_PROTOCOL) == before + 1
        for response in (handler, protocol, door):
            assert response.status_code == 200
            assert "said &lt;thrice&gt;" in response.text
            assert response.content == handler.content
            assert _comparable(response) == _comparable(handler)
        assert protocol.headers["cache-control"] == "public, max-age=300, immutable"
        assert protocol.headers["date"]

        etag = protocol.headers["etag"]
        for suffix in ("", "?from=door"):
            unchanged = await visitor.get(path + suffix, headers={**HTML, "if-none-match": etag})
            assert unchanged.status_code == 304
            assert unchanged.content == b""
            assert unchanged.headers["etag"] == etag
            assert "content-type" not in unchanged.headers
            changed = await visitor.get(path + suffix, headers={**HTML, "if-none-match": '"x"'})
            assert changed.status_code == 200
            assert changed.content == handler.content
            head = await visitor.client.head(path + suffix, headers=HTML)
            assert head.status_code == 200
            assert head.content == b""
            assert _comparable(head) == _comparable(handler)
        assert await metric(base, IN_PROTOCOL) == before + 4  # 1 + (304, 200, HEAD)

        # JSON and requests that are not plain keep-alive HTTP/1.1 take the usual way.
        as_json = await visitor.get(path, headers={"accept": "application/json"})
        assert as_json.json()["body"] == "said <thrice>"
        async with await RawConnection.open(base) as raw:
            await raw.send(f"GET {path} HTTP/1.0\r\n\r\n".encode())
            old = await raw.read_response()
            assert old.status == 200
            assert old.body == handler.content
            assert await raw.wait_closed(5) is not None  # HTTP/1.0 without keep-alive
        assert await metric(base, IN_PROTOCOL) == before + 4


async def test_pipelined_requests_are_answered_in_order_and_a_stream_behind_stays_open(
    app_server: AppServerFactory,
) -> None:
    """An answer from memory arms the connection's idle timer (5 s), as any answer does;
    a stream pipelined behind it must not be closed by that timer."""
    server = await asyncio.to_thread(app_server, workers=1)
    base = server.base_url
    async with await Visitor.arrive(base) as visitor:
        path = f"/fragments/activity/{await _new_item(visitor, 'pipelined')}"
        item = await visitor.get(path, headers=HTML)  # now cached
        host = f"Host: 127.0.0.1:{server.port}\r\n"
        requests = [
            f"GET {path} HTTP/1.1\r\n{host}\r\n",
            f"GET /fragments/counter HTTP/1.1\r\n{host}Accept: application/json\r\n\r\n",
            f"HEAD {path} HTTP/1.1\r\n{host}\r\n",
            f"GET {path} HTTP/1.1\r\n{host}\r\n",
        ]
        async with await RawConnection.open(base) as raw:
            await raw.send("".join(requests).encode())
            first = await raw.read_response()
            assert (first.status, first.body) == (200, item.content)
            counter = await raw.read_response()
            assert counter.status == 200
            assert b'"value"' in counter.body
            head = await raw.read_response(method="HEAD")
            assert (head.status, head.body) == (200, b"")
            assert head.headers["content-length"] == str(len(item.content))
            last = await raw.read_response()
            assert (last.status, last.body) == (200, item.content)
        stream = f"GET /events HTTP/1.1\r\n{host}Accept: text/event-stream\r\n\r\n"
        async with await RawConnection.open(base) as raw:
            await raw.send((requests[0] + stream).encode())
            # Read as bytes: the stream never ends, so no response parser returns it.
            received = b""
            async with asyncio.timeout(5):
                while b"text/event-stream" not in received:
                    chunk = await raw.reader.read(65536)
                    assert chunk, "closed before the stream began"
                    received += chunk
            assert received.startswith(b"HTTP/1.1 200")
            assert item.content in received  # the item's answer came first
            assert received.index(item.content) < received.index(b"text/event-stream")
            # Pings come every 2 s here; the idle timer would close it 5 s after the answer.
            until = time.monotonic() + 8
            while (left := until - time.monotonic()) > 0:
                with contextlib.suppress(TimeoutError):
                    chunk = await asyncio.wait_for(raw.reader.read(65536), left)
                    assert chunk, "the stream behind an answer from memory was closed"
                    received += chunk
            assert received.count(b"event: ping") >= 3


async def test_a_new_item_is_read_once_when_its_notification_arrives(
    app_server: AppServerFactory,
) -> None:
    """Warmed while items are being fetched here; a stream whose client fetches nothing
    (an API client, a bare stream) costs no read per event."""
    server = await asyncio.to_thread(app_server, workers=1)
    base = server.base_url
    async with await Visitor.arrive(base) as visitor:
        await _new_item(visitor, "nobody is watching")
        async with SSEClient.open(base, cookies=visitor.cookie_header()) as stream:
            await stream.wait_for_event("ping", timeout=5)
            unfetched = await _new_item(visitor, "nobody fetches this")
            await stream.wait_for_event("activity", str(unfetched), timeout=5)
            await asyncio.sleep(0.5)
            assert await metric(base, WARMED) == 0, "warmed though nobody fetches items"

            before = await metric(base, IN_PROTOCOL)
            first = await visitor.get(f"/fragments/activity/{unfetched}", headers=HTML)
            assert first.status_code == 200  # rendered by the handler: it was not warmed
            assert await metric(base, IN_PROTOCOL) == before

            item_id = await _new_item(visitor, "everyone will ask")
            await stream.wait_for_event("activity", str(item_id), timeout=5)
            await eventually(lambda: metric(base, WARMED), lambda n: n == 1, timeout=5)
            # Its very first ask is answered from memory: the notification rendered it.
            asked = await visitor.get(f"/fragments/activity/{item_id}", headers=HTML)
            assert asked.status_code == 200
            assert "everyone will ask" in asked.text
            assert await metric(base, IN_PROTOCOL) == before + 1


async def test_a_client_that_asks_for_items_and_never_reads_holds_little_memory(
    app_server: AppServerFactory,
) -> None:
    """Pipelined item requests from a client that reads nothing: once its socket is full
    the server stops answering from memory and, the usual way, stops reading it, instead
    of queueing answers (about 1.3 KiB each) without bound."""
    server = await asyncio.to_thread(app_server, workers=1)
    base = server.base_url
    async with await Visitor.arrive(base) as visitor:
        path = f"/fragments/activity/{await _new_item(visitor, 'x' * 200)}"
        assert (await visitor.get(path, headers=HTML)).status_code == 200  # now cached
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
    rss_before = psutil.Process(server.pid).memory_info().rss
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    sent = 0
    try:
        async with asyncio.timeout(8):  # sends stop once the server stops reading
            while sent < 40_000:
                await loop.sock_sendall(sock, request * 100)
                sent += 100
    except TimeoutError:
        pass
    await asyncio.sleep(1)
    grown = psutil.Process(server.pid).memory_info().rss - rss_before
    sock.close()
    # Answering all that was sent would take sent x 1.3 KiB (over 50 MB for 40,000).
    assert grown < 12 * 1024 * 1024, f"{sent} requests sent, RSS grew {grown >> 20} MiB"


async def test_odd_requests_after_an_answer_from_memory_keep_the_connection_rules(
    app_server: AppServerFactory,
) -> None:
    """A blank line after an answer from memory (which cancels the idle timer) still leaves
    the connection a deadline; an upgrade request for an item goes uvicorn's way."""
    server = await asyncio.to_thread(app_server, {"RIPPLE_HEADER_TIMEOUT_SECONDS": "2"}, workers=1)
    base = server.base_url
    async with await Visitor.arrive(base) as visitor:
        path = f"/fragments/activity/{await _new_item(visitor, 'odd')}"
        assert (await visitor.get(path, headers=HTML)).status_code == 200  # now cached
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    async with await RawConnection.open(base) as raw:
        await raw.send(request.encode())
        assert (await raw.read_response()).status == 200
        await raw.send(b"\r\n")  # then nothing
        closed = await raw.wait_closed(10)
        assert closed is not None, "a blank line after an answer from memory held it open"
    upgrade = request.replace("\r\n\r\n", "\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
    async with await RawConnection.open(base) as raw:
        await raw.send(upgrade.encode())
        await raw.wait_closed(3)
    assert "Traceback" not in server.log_text()
