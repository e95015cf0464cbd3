"""A visitor of the site: an HTTP client holding one visitor's cookies and CSRF token."""

from collections.abc import Mapping
from typing import Self

import httpx


class Visitor:
    """``visitor = await Visitor.arrive(base_url)``; then ``await visitor.increment()`` etc.

    Arriving loads ``/`` once, which sets the session cookie and ``csrftoken``; every later
    request carries ``x-csrftoken`` copied from the cookie at send time (so a rotated token is
    followed, as the page script does). Requests ask for JSON unless told otherwise.
    """

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client
        self.client.event_hooks["request"].append(self._add_csrf_header)

    @classmethod
    async def arrive(
        cls,
        base_url: str,
        *,
        json: bool = True,
        headers: Mapping[str, str] | None = None,
        timeout: float = 10.0,
    ) -> Self:
        default_headers = {"accept": "application/json"} if json else {}
        default_headers.update(headers or {})
        client = httpx.AsyncClient(base_url=base_url, headers=default_headers, timeout=timeout)
        visitor = cls(client)
        try:
            page = await client.get("/", headers={"accept": "text/html"})
            page.raise_for_status()
            if visitor.csrftoken is None:
                raise AssertionError(f"GET / set no csrftoken cookie: {page.headers}")
        except BaseException:
            await client.aclose()
            raise
        return visitor

    async def _add_csrf_header(self, request: httpx.Request) -> None:
        token = self.csrftoken
        if token is not None and "x-csrftoken" not in request.headers:
            request.headers["x-csrftoken"] = token

    @property
    def csrftoken(self) -> str | None:
        return self.cookies().get("csrftoken")

    def cookies(self) -> dict[str, str]:
        # Iterating the jar avoids httpx's CookieConflict when a name is set for two paths.
        return {cookie.name: cookie.value or "" for cookie in self.client.cookies.jar}

    def cookie_header(self) -> str:
        """The ``Cookie`` header value a browser would send (for ``SSEClient``)."""
        return "; ".join(f"{name}={value}" for name, value in self.cookies().items())

    async def get(self, path: str, *, headers: Mapping[str, str] | None = None) -> httpx.Response:
        return await self.client.get(path, headers=headers)

    async def increment(self) -> httpx.Response:
        return await self.client.post("/counter/increment")

    async def post(self, message: str) -> httpx.Response:
        return await self.client.post("/activity", data={"message": message})

    async def rename(self, name: str) -> httpx.Response:
        return await self.client.post("/me", data={"name": name})

    async def aclose(self) -> None:
        await self.client.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
