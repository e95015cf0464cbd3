"""The request line and response head of a raw HTTP/1.1 ``GET``, for the socket clients."""

from collections.abc import Mapping
from urllib.parse import urlsplit

HeaderMap = dict[str, str]


def _cookie_value(cookies: Mapping[str, str] | str | None) -> str | None:
    if cookies is None or isinstance(cookies, str):
        return cookies or None
    return "; ".join(f"{name}={value}" for name, value in cookies.items()) or None


def build_request(
    base_url: str,
    path: str,
    headers: Mapping[str, str] | None,
    cookies: Mapping[str, str] | str | None,
) -> tuple[str, int, bytes]:
    url = urlsplit(base_url)
    host = url.hostname or "127.0.0.1"
    port = url.port or 80
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {host}:{port}",
        "Accept: text/event-stream",
        "Cache-Control: no-cache",
    ]
    cookie = _cookie_value(cookies)
    if cookie:
        lines.append(f"Cookie: {cookie}")
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return host, port, ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def parse_head(head: bytes) -> tuple[int, HeaderMap]:
    """Status code and lower-cased headers (repeated headers joined with ", ")."""
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers: HeaderMap = {}
    for line in lines[1:]:
        if not line:
            continue
        name, _, value = line.partition(":")
        key = name.strip().lower()
        value = value.strip()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return status, headers
