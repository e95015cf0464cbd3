"""Attacks on the running app over HTTP (real server, real PostgreSQL): CSRF, escaping,
security headers, input limits, cookies, junk on every route and on the stream, fuzzing,
moderation; and at the end, proof that the database holds exactly the accepted writes.

One server (two workers) on a database of this module's own serves every test here. Every
HTTP client carries the ledger's response hook, which books each accepted write (a 200 or
201 to a POST); the last test compares the book with the rows.
"""

import asyncio
import base64
import os
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from support import database
from support.paths import REPO_ROOT
from support.server import APP_VARIABLES, AppServer
from support.sse import SSEClient
from support.visitors import Visitor

from app.models import MESSAGE_MAX, NAME_MAX
from app.web.validation import clean_name, parse_form

COOKIE = "ripple_visitor"
FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


# -- the ledger: every write the app said it accepted ----------------------------------------


def _set_cookie(response: httpx.Response, name: str) -> str | None:
    for header in response.headers.get_list("set-cookie"):
        key, _, rest = header.partition("=")
        if key.strip() == name:
            return rest.split(";", 1)[0]
    return None


def _request_cookie(request: httpx.Request, name: str) -> str | None:
    for pair in str(request.headers.get("cookie", "")).split(";"):
        key, _, value = pair.strip().partition("=")
        if key == name:
            return value
    return None


def _visitor(cookie: str | None) -> tuple[str, str]:
    """(id, generated name) from an identity cookie the server issued."""
    assert cookie is not None, "an accepted write without an identity"
    version, hex_id, name, _signature = cookie.split(".")
    assert version == "v1"
    return hex_id, base64.urlsafe_b64decode(name + "=" * (-len(name) % 4)).decode()


def _is_json(response: httpx.Response) -> bool:
    return str(response.headers.get("content-type", "")).startswith("application/json")


@dataclass
class Ledger:
    messages: set[int] = field(default_factory=set)
    pruned: set[int] = field(default_factory=set)
    increments: int = 0
    renamed: int = 0  # accepted renames that changed the name
    names: dict[str, str] = field(default_factory=dict)  # visitor id -> name now
    writers: set[str] = field(default_factory=set)  # recorded by an accepted post or rename
    streamers: set[str] = field(default_factory=set)  # recorded by opening a stream

    def observe(self, response: httpx.Response) -> None:
        request = response.request
        if request.method != "POST" or response.status_code not in {200, 201}:
            return
        path = request.url.path
        if path == "/counter/increment":
            self.increments += 1
            return
        # A new identity comes back in Set-Cookie; otherwise the request's cookie was valid.
        hex_id, guest = _visitor(_set_cookie(response, COOKIE) or _request_cookie(request, COOKIE))
        self.writers.add(hex_id)
        if path == "/activity":
            assert response.status_code == 201
            if _is_json(response):
                self.messages.add(int(response.json()["id"]))
            else:
                found = re.search(r'data-id="(\d+)"', response.text)
                assert found, response.text
                self.messages.add(int(found.group(1)))
        elif path == "/me":
            if _is_json(response):
                name = response.json()["name"]
            else:  # the presence fragment: read the name from the urlencoded request
                name = clean_name(parse_form(request.content).get("name"))
            if name != self.names.get(hex_id, guest):
                self.renamed += 1
            self.names[hex_id] = name
        else:
            raise AssertionError(f"a POST to {path} was accepted")

    async def ahook(self, response: httpx.Response) -> None:
        await response.aread()
        self.observe(response)

    def hook(self, response: httpx.Response) -> None:
        response.read()
        self.observe(response)


@dataclass
class Site:
    server: AppServer
    db: str
    ledger: Ledger

    @property
    def base_url(self) -> str:
        return self.server.base_url

    async def arrive(self, *, json: bool = True) -> Visitor:
        visitor = await Visitor.arrive(self.base_url, json=json)
        visitor.client.event_hooks["response"].append(self.ledger.ahook)
        return visitor

    def client(self, **kwargs: Any) -> httpx.AsyncClient:
        """A client that adds nothing by itself (no cookies, no CSRF header)."""
        return httpx.AsyncClient(
            base_url=self.base_url, event_hooks={"response": [self.ledger.ahook]}, **kwargs
        )


@pytest.fixture(scope="module")
def site(admin_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    url = asyncio.run(database.create_database(admin_url))
    server: AppServer | None = None
    try:
        database.migrate(url)
        server = AppServer(
            url,
            {"MAX_STREAMS_PER_CLIENT": "0"},
            workers=2,
            log_dir=tmp_path_factory.mktemp("hostile-server"),
            startup_timeout=60,  # generous: a loaded CI machine starts slowly
        )
        server.start()
        site = Site(server, url, Ledger())
        yield site
        asyncio.run(_database_holds_exactly_the_accepted_writes(site))
    finally:
        if server is not None:
            server.stop()
        asyncio.run(database.drop_database(url, admin_url))


# -- helpers ---------------------------------------------------------------------------------


async def _counts(site: Site) -> tuple[int, int, int]:
    """(counter value, feed rows, visitors)."""
    row = (
        await database.fetch(
            site.db,
            "SELECT (SELECT value FROM counters WHERE id = 1) AS counter, "
            "(SELECT count(*) FROM activity) AS items, (SELECT count(*) FROM visitors) AS people",
        )
    )[0]
    return int(row["counter"]), int(row["items"]), int(row["people"])


def _assert_security_headers(headers: Mapping[str, str], what: str) -> None:
    csp = headers.get("content-security-policy", "")
    directives = {part.split()[0]: part.split()[1:] for part in csp.split(";") if part.strip()}
    assert directives.get("script-src") == ["'self'"], (what, csp)
    assert directives.get("frame-ancestors") == ["'none'"], (what, csp)
    assert "unsafe-inline" not in csp, (what, csp)
    assert "unsafe-eval" not in csp, (what, csp)
    assert headers.get("x-content-type-options") == "nosniff", what
    assert headers.get("referrer-policy") == "same-origin", what


def _assert_readable_error(response: httpx.Response, status: int) -> None:
    what = f"{response.request.method} {response.request.url} -> {response.status_code}"
    assert response.status_code == status, f"{what}: {response.text[:300]}"
    _assert_security_headers(response.headers, what)
    body = response.text
    assert "Traceback" not in body, what
    assert 'File "' not in body, what
    assert len(body) < 300, what
    if _is_json(response):
        assert response.json()["detail"], what
    else:
        assert response.headers["content-type"] == "text/plain; charset=utf-8", what
        assert "<" not in body, what
        assert body.strip(), what


class _Html(HTMLParser):
    """Tags with their attributes, and the text a browser would show."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.title = ""
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._in_title = tag == "title"

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_endtag(self, tag: str) -> None:
        self._in_title = False

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._in_title:
            self.title += data


def _assert_inert(body: str, *texts: str, where: str) -> _Html:
    """No user text became markup: no handler attributes, no inline or foreign scripts."""
    for text in texts:
        assert text not in body, f"{where}: raw user text in the HTML"
    assert "1337" not in body, f"{where}: user text was evaluated as a template"
    html = _Html()
    html.feed(body)
    html.close()
    for tag, attrs in html.tags:
        handlers = [name for name in attrs if name.startswith("on")]
        assert not handlers, f"{where}: <{tag}> got {handlers}"
        if tag == "script":
            assert (attrs.get("src") or "").startswith("/static/"), f"{where}: {attrs}"
        assert tag not in {"img", "iframe", "object", "embed"}, f"{where}: <{tag}> injected"
    return html


def _cli(site: Site, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in APP_VARIABLES and not key.startswith("RIPPLE_")
    }
    env.update({"DATABASE_URL": site.db, "APP_ENV": "development"})
    return subprocess.run(
        [sys.executable, "-m", "app", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


# -- CSRF ------------------------------------------------------------------------------------


async def test_writes_without_the_right_csrf_token_are_refused_and_write_nothing(
    site: Site,
) -> None:
    async with await site.arrive() as ann, await site.arrive() as bob, site.client() as raw:
        token, other = ann.csrftoken, bob.csrftoken
        assert token is not None
        assert other is not None
        assert token != other
        visitor = ann.cookies()[COOKIE]
        flipped = token[:-1] + ("0" if token[-1] != "0" else "1")
        cases: list[tuple[str, dict[str, Any]]] = []
        for path, form in [
            ("/counter/increment", {}),
            ("/activity", {"message": "forged"}),
            ("/me", {"name": "Mallory"}),
        ]:
            jar = f"{COOKIE}={visitor}; csrftoken={token}"
            for headers in [
                {"cookie": jar},  # no header at all: what a cross-site form sends
                {"cookie": jar, "x-csrftoken": ""},
                {"cookie": jar, "x-csrftoken": other},  # a real token, of another session
                {"cookie": jar, "x-csrftoken": flipped},
                {"cookie": jar, "x-csrftoken": "x" * 128},
                {"cookie": jar, "x-csrftoken": ("é" * 128).encode("latin-1")},
                {"cookie": f"{COOKIE}={visitor}", "x-csrftoken": token},  # no cookie
                {
                    "cookie": f"{COOKIE}={visitor}; csrftoken=\xe9{token}".encode("latin-1"),
                    "x-csrftoken": token,
                },
            ]:
                cases.append((path, {"data": form, "headers": headers}))
            # The token in the body instead of the header (Litestar's fallback) is not enough.
            cases.append(
                (path, {"data": {**form, "_csrf_token": token}, "headers": {"cookie": jar}})
            )
            cases.append(
                (path, {"files": {"_csrf_token": (None, b"\xff\xfe")}, "headers": {"cookie": jar}})
            )
        before = await _counts(site)
        for path, request in cases:
            response = await raw.post(path, **request)
            _assert_readable_error(response, 403)
            assert "CSRF" in response.text
        assert await _counts(site) == before

        allowed = await ann.increment()  # the same request with the right token works
        assert allowed.status_code == 200
        assert (await _counts(site))[0] == before[0] + 1


# -- output: headers and escaping ------------------------------------------------------------


async def test_security_headers_on_pages_fragments_errors_static_and_the_stream(
    site: Site,
) -> None:
    async with await site.arrive(json=False) as ann, site.client() as raw:
        posted = await ann.post("headers")
        item_id = re.search(r'data-id="(\d+)"', posted.text)
        assert item_id
        responses = [
            posted,
            await ann.get("/"),
            await ann.get("/fragments/counter"),
            await ann.get("/fragments/presence"),
            await ann.get("/fragments/activity"),
            await ann.get(f"/fragments/activity/{item_id.group(1)}"),
            await ann.increment(),
            await ann.rename("Header Checker"),
            await ann.get("/static/js/main.js"),
            await ann.get("/healthz"),
            await ann.get("/metrics"),
        ]
        for response in responses:
            assert response.status_code < 300, response.request.url
            _assert_security_headers(response.headers, str(response.request.url))
        errors = [
            (await ann.get("/no/such/page"), 404),
            (await ann.get("/fragments/activity/999999999"), 404),
            (await ann.get("/activity"), 405),
            (await raw.post("/activity", data={"message": "x"}), 403),
            (await ann.post(""), 422),
            (await ann.client.post("/activity", content=b"m" * 40_000), 413),
            (await ann.get("/fragments/activity?after=x"), 400),
        ]
        for response, status in errors:
            _assert_readable_error(response, status)
    async with SSEClient.open(site.base_url) as stream:
        assert stream.status == 200
        _assert_security_headers(stream.headers, "/events")


NAME = "\"'><svg/onload=alert(1)><script>x()"
MESSAGE = (
    "</textarea></li><script>alert(document.cookie)</script>"
    '<img src=x onerror="alert(2)" data-x=\'y\'>&amp; {{ 7*191 }} " onmouseover="alert(3)'
)


async def test_hostile_name_and_message_render_inert_in_every_place(site: Site) -> None:
    assert len(NAME) <= NAME_MAX
    assert len(MESSAGE) <= MESSAGE_MAX
    async with await site.arrive(json=False) as eve, await site.arrive(json=False) as ann:
        eve_id = eve.cookies()[COOKIE].split(".")[1]
        async with SSEClient.open(site.base_url, cookies=eve.cookie_header()) as stream:
            site.ledger.streamers.add(eve_id)
            await stream.wait_for_event("ping", timeout=5)  # eve is online now

            renamed = await eve.rename(NAME)
            assert renamed.status_code == 200
            places = {"rename answer (presence fragment)": renamed.text}
            posted = await eve.post(MESSAGE)
            assert posted.status_code == 201
            places["post answer (item fragment)"] = posted.text
            found = re.search(r'data-id="(\d+)"', posted.text)
            assert found
            item_id = int(found.group(1))
            places["item fragment"] = (await ann.get(f"/fragments/activity/{item_id}")).text
            places["list fragment (after)"] = (
                await ann.get(f"/fragments/activity?after={item_id - 1}")
            ).text
            places["list fragment (newest)"] = (await ann.get("/fragments/activity")).text
            places["presence fragment"] = (await ann.get("/fragments/presence")).text
            places["page, as eve"] = (await eve.get("/")).text
            places["page, as someone else"] = (await ann.get("/")).text

        for where, body in places.items():
            html = _assert_inert(body, NAME, MESSAGE, where=where)
            shown = "".join(html.text)
            if "presence" not in where:
                assert MESSAGE in shown, f"{where}: the message is not shown as text"
            assert NAME in shown, f"{where}: the name is not shown as text"
            if where.startswith("page"):
                assert html.title == "Ripple", where
        page = _Html()
        page.feed(places["page, as eve"])
        field_value = next(a.get("value") for t, a in page.tags if a.get("id") == "name-input")
        assert field_value == NAME  # intact inside the attribute, not breaking out of it

        as_json = await ann.get(
            f"/fragments/activity/{item_id}", headers={"accept": "application/json"}
        )
        assert as_json.headers["content-type"].startswith("application/json")
        assert as_json.json()["body"] == MESSAGE
        assert as_json.json()["author_name"] == NAME


# -- input limits ----------------------------------------------------------------------------


async def test_input_limits_match_the_form_and_bad_text_gets_a_readable_422(site: Site) -> None:
    async with await site.arrive() as ann:
        page = _Html()
        page.feed((await ann.get("/", headers={"accept": "text/html"})).text)
        by_id = {attrs.get("id"): attrs for _tag, attrs in page.tags if attrs.get("id")}
        assert by_id["name-input"].get("maxlength") == str(NAME_MAX)
        textarea = by_id["post-message"]
        assert textarea.get("data-max") == str(MESSAGE_MAX)  # the page script's check
        assert textarea.get("maxlength") in {None, str(MESSAGE_MAX)}

        accepted = [
            "x" * MESSAGE_MAX,
            "😀" * MESSAGE_MAX,  # code points, not bytes or UTF-16 units
            "  \n" + "y" * MESSAGE_MAX + " \r\n",  # trimmed first
            "line one\r\nline two",
            "emoji 👩‍👩‍👧 and accents é and RTL text שלום",
        ]
        stored = {}
        for message in accepted:
            response = await ann.post(message)
            assert response.status_code == 201, (message, response.text)
            item = await ann.get(f"/fragments/activity/{response.json()['id']}")
            stored[message] = item.json()["body"]
        assert stored["line one\r\nline two"] == "line one\nline two"
        assert stored["  \n" + "y" * MESSAGE_MAX + " \r\n"] == "y" * MESSAGE_MAX

        before = await _counts(site)
        refused = [
            ("", "Write a message"),
            (" \r\n\t ", "Write a message"),
            ("x" * (MESSAGE_MAX + 1), f"at most {MESSAGE_MAX}"),
            ("😀" * (MESSAGE_MAX + 1), f"at most {MESSAGE_MAX}"),
            ("nul \x00 byte", "Control characters"),
            ("bell \x07", "Control characters"),
            ("tab\there", "Control characters"),
            ("\x1b[2Jescape", "Control characters"),
            ("evil\u202egnp.exe", "direction"),
            ("isolate \u2067x", "direction"),
        ]
        for message, reason in refused:
            response = await ann.post(message)
            _assert_readable_error(response, 422)
            assert reason in response.json()["detail"], (message, response.text)
        for body, content_type in [
            (b"message=%FF%FEhi", "application/x-www-form-urlencoded"),
            (b"message=\xff\xfehi", "application/x-www-form-urlencoded"),
            (b"message=caf%E9", "application/x-www-form-urlencoded"),
        ]:
            response = await ann.client.post(
                "/activity", content=body, headers={"content-type": content_type}
            )
            _assert_readable_error(response, 422)
            assert "UTF-8" in response.json()["detail"]
        response = await ann.client.post("/activity", files={"message": (None, b"bad \xff")})
        _assert_readable_error(response, 422)
        response = await ann.client.post("/activity", json={"message": "json is not a form"})
        _assert_readable_error(response, 422)

        for name, reason in [
            ("", "at least one"),
            ("n" * (NAME_MAX + 1), f"at most {NAME_MAX}"),
            ("two\nlines", "one line"),
            ("two\u2028lines", "one line"),
            ("tab\tname", "Control characters"),
            ("\u202eevil", "direction"),
        ]:
            response = await ann.rename(name)
            _assert_readable_error(response, 422)
            assert reason in response.json()["detail"], (name, response.text)
        assert await _counts(site) == before  # nothing refused was written

        for name in ["n" * NAME_MAX, "😀" * NAME_MAX, "  Ann  "]:
            response = await ann.rename(name)
            assert response.status_code == 200, (name, response.text)
            assert response.json()["name"] == name.strip()


async def test_oversized_bodies_get_413_and_write_nothing(site: Site) -> None:
    def chunks() -> Iterator[bytes]:
        yield b"message="
        for _ in range(64):
            yield b"x" * 1024

    async def achunks() -> Any:
        for chunk in chunks():
            yield chunk

    async with await site.arrive() as ann:
        before = await _counts(site)
        for path in ["/activity", "/me", "/counter/increment"]:
            attempts: list[dict[str, Any]] = [
                {"data": {"message": "x" * 20_000, "name": "y" * 20_000}},
                {
                    "content": b"m" * 1_000_000,
                    "headers": {"content-type": "application/x-www-form-urlencoded"},
                },
                {"content": achunks()},  # chunked: no Content-Length to check up front
                {"files": {"message": (None, b"z" * 20_000)}},
                {"files": {"upload": ("big.bin", b"\0" * 200_000)}},
            ]
            for kwargs in attempts:
                response = await ann.client.post(path, **kwargs)
                _assert_readable_error(response, 413)
        assert await _counts(site) == before


async def test_unknown_routes_and_wrong_methods_are_404_and_405_never_500(site: Site) -> None:
    async with await site.arrive() as ann:
        cases = [
            ("GET", "/nope", 404),
            ("GET", "/.env", 404),
            ("GET", "/fragments/nope", 404),
            ("GET", "/fragments/activity/0", 404),
            ("GET", "/fragments/activity/-1", 404),
            ("GET", "/fragments/activity/9223372036854775807", 404),
            ("GET", "/fragments/activity/9223372036854775808", 404),
            ("GET", "/fragments/activity/" + "9" * 200, 404),
            ("GET", "/fragments/activity/abc", 404),
            ("GET", "/static/%2e%2e/app/main.py", 404),
            ("GET", "/static/..%2fapp%2fmain.py", 404),
            ("GET", "/static/nope.js", 404),
            ("POST", "/nope", 404),
            ("GET", "/activity", 405),
            ("GET", "/me", 405),
            ("GET", "/counter/increment", 405),
            ("PUT", "/activity", 405),
            ("DELETE", "/me", 405),
            ("PATCH", "/counter/increment", 405),
            ("POST", "/", 405),
            ("POST", "/fragments/counter", 405),
            ("DELETE", "/fragments/activity/1", 405),
            ("POST", "/healthz", 405),
            ("GET", "/fragments/activity?after=abc", 400),
            ("GET", "/fragments/activity?before=-1", 400),
            ("GET", "/fragments/activity?after=%C2%B2", 400),  # a digit int() refuses
            ("GET", "/fragments/activity?after=" + "9" * 19, 400),
        ]
        for method, path, status in cases:
            response = await ann.client.request(method, path)
            _assert_readable_error(response, status)
            html = await ann.client.request(method, path, headers={"accept": "text/html"})
            _assert_readable_error(html, status)


# -- sessions --------------------------------------------------------------------------------


def _cookie_attributes(response: httpx.Response, name: str) -> set[str]:
    for header in response.headers.get_list("set-cookie"):
        if header.startswith(f"{name}="):
            return {part.strip().lower() for part in header.split(";")[1:]}
    raise AssertionError(f"no {name} cookie set: {response.headers}")


async def test_a_tampered_identity_cookie_gets_a_fresh_identity_never_another_visitors(
    site: Site,
) -> None:
    async with await site.arrive() as ann, await site.arrive() as bob, site.client() as raw:
        assert (await bob.post("bob was here")).status_code == 201
        ann_cookie, bob_cookie = ann.cookies()[COOKIE], bob.cookies()[COOKIE]
        attributes = _cookie_attributes(await raw.get("/"), COOKIE)
        assert {"httponly", "samesite=lax", "path=/"} <= attributes
        assert "secure" not in attributes  # development; the production test checks Secure

        bob_id = bob_cookie.split(".")[1]
        version, ann_id, ann_name, ann_signature = ann_cookie.split(".")
        forged = f"{version}.{bob_id}.{ann_name}.{ann_signature}"
        jar = f"{COOKIE}={forged}; csrftoken={ann.csrftoken}"
        headers = {"cookie": jar, "x-csrftoken": ann.csrftoken or "", "accept": "application/json"}

        async def bob_rows() -> tuple[int, str]:
            row = (
                await database.fetch(
                    site.db,
                    "SELECT (SELECT count(*) FROM activity WHERE author_id = $1) AS items, "
                    "(SELECT name FROM visitors WHERE id = $1) AS name",
                    bob_id,
                )
            )[0]
            return int(row["items"]), str(row["name"])

        bob_before = await bob_rows()
        posted = await raw.post("/activity", data={"message": "who am I?"}, headers=headers)
        assert posted.status_code == 201
        fresh = _set_cookie(posted, COOKIE)
        assert fresh is not None, "a tampered cookie must be replaced"
        fresh_id = fresh.split(".")[1]
        assert fresh_id not in {ann_id, bob_id}
        assert {"httponly", "samesite=lax"} <= _cookie_attributes(posted, COOKIE)
        item = (await raw.get(f"/fragments/activity/{posted.json()['id']}", headers=headers)).json()
        assert item["author_id"] == fresh_id
        renamed = await raw.post("/me", data={"name": "Not Bob"}, headers=headers)
        assert renamed.status_code == 200
        assert _set_cookie(renamed, COOKIE) not in {None, forged}
        assert await bob_rows() == bob_before  # nothing attributed to bob, bob not renamed

        # Cookies that are not even text a signature could cover.
        for value in [b"v1.\xe9\xe9.\xff.sig", b"", b"v1", b"x" * 3000, b"v1.." + b"." * 50]:
            cookie = b"ripple_visitor=" + value + b"; csrftoken=" + (ann.csrftoken or "").encode()
            page = await raw.get("/", headers={b"cookie": cookie})
            assert page.status_code == 200, value
            assert _set_cookie(page, COOKIE) is not None
            wrote = await raw.post(
                "/counter/increment",
                headers={b"cookie": cookie, b"x-csrftoken": (ann.csrftoken or "").encode()},
            )
            assert wrote.status_code == 200, (value, wrote.text)
            async with SSEClient.open(
                site.base_url, cookies=cookie.decode("latin-1"), timeout=5
            ) as stream:
                assert stream.status == 200
                assert (await stream.next_event(timeout=5)).event == "ping"


# -- the stream ------------------------------------------------------------------------------


async def test_the_stream_ignores_junk_cursors_and_query_strings(site: Site) -> None:
    cases = [
        ({"last-event-id": "-1"}, "/events"),
        ({"last-event-id": "9" * 19}, "/events"),
        ({"last-event-id": "9" * 4000}, "/events"),
        ({"last-event-id": "1e5"}, "/events"),
        ({"last-event-id": "0x10"}, "/events"),
        ({"last-event-id": "\xb2\xb3"}, "/events"),
        ({}, "/events?last_event_id=%00"),
        ({}, "/events?last_event_id=%ff%fe&last_event_id=2"),
        ({}, "/events?last_event_id=" + "9" * 3000),
        ({}, "/events?%%%=%%%&a[]=1&a[]=2&&&=="),
        ({}, "/events?" + "junk=x&" * 500),
        ({}, "/events?last_event_id=%F0%9F%98%80"),
    ]
    for headers, path in cases:
        stream = await SSEClient.connect(site.base_url, path, headers=headers, timeout=5)
        try:
            assert stream.status in {200, 400, 431}, (headers, path[:80], stream.status)
            if stream.status == 200:
                first = await stream.next_event(timeout=5)
                assert first.event == "ping"
                assert first.retry is not None
                extra = await stream.collect(0.1)
                kinds = {"ping", "activity", "resync", "counter", "presence"}
                assert {ev.event for ev in extra} <= kinds
        finally:
            await stream.aclose()


# -- fuzzing the running app -----------------------------------------------------------------

tricky_text = st.text(
    alphabet=st.one_of(
        st.characters(codec="utf-8"),
        st.sampled_from(list("\x00\t\r\n\u202e\u2028\ufeff<>&\"'%+=;😀")),
    ),
    max_size=300,
)
field_names = st.one_of(
    st.sampled_from(["message", "name", "_csrf_token", "", "message[]"]), st.text(max_size=8)
)
forms = st.one_of(
    st.dictionaries(field_names, tricky_text, max_size=3),
    # Often exactly the field the endpoint reads, so some writes are accepted.
    st.builds(lambda text: {"message": text, "name": text[:45]}, tricky_text),
)
content_types = st.sampled_from(
    [
        "application/x-www-form-urlencoded",
        "application/x-www-form-urlencoded; charset=latin-1",
        "multipart/form-data",
        "multipart/form-data; boundary=xyz",
        "multipart/form-data; boundary=",
        "text/plain",
        "application/json",
        "application/octet-stream",
        "",
    ]
)
bodies = st.one_of(
    st.tuples(st.just("form"), forms),
    st.tuples(
        st.just("multipart"),
        st.dictionaries(
            field_names,
            st.one_of(tricky_text.map(str.encode), st.binary(max_size=300)),
            max_size=3,
        ),
    ),
    st.tuples(st.just("raw"), st.tuples(content_types, st.binary(max_size=2000))),
)
accepts = st.sampled_from(
    ["application/json", "text/html", "*/*", "text/html, application/json;q=0.1", "nonsense/x"]
)


WRITE_ANSWERS: Counter[int] = Counter()  # what the write fuzzing got, checked at the end


@pytest.fixture(scope="module")
def fuzz_client(site: Site) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=site.base_url, timeout=10, event_hooks={"response": [site.ledger.hook]}
    ) as client:
        client.get("/")  # the identity and csrftoken cookies
        yield client


@FUZZ
@example(path="/activity", body=("form", {"message": "ok"}), accept="*/*", hx=True, keep=True)
@example(
    path="/activity", body=("multipart", {"message": b"\xff"}), accept="*/*", hx=False, keep=False
)
@example(path="/me", body=("multipart", {"name": b"Fuzzy"}), accept="*/*", hx=False, keep=True)
@given(
    path=st.sampled_from(["/activity", "/me", "/counter/increment"]),
    body=bodies,
    accept=accepts,
    hx=st.booleans(),
    keep=st.booleans(),
)
def test_fuzz_writes_with_a_valid_token_never_get_a_5xx(
    site: Site,
    fuzz_client: httpx.Client,
    path: str,
    body: tuple[str, Any],
    accept: str,
    hx: bool,
    keep: bool,
) -> None:
    client = fuzz_client
    if not keep:  # sometimes arrive with no identity: a fresh one per request
        client.cookies.delete(COOKIE)
    token = client.cookies.get("csrftoken")
    assert token
    # The ledger reads a rename's accepted name from JSON (or an urlencoded request).
    headers = {"x-csrftoken": token, "accept": "application/json" if path == "/me" else accept}
    # A plain form post (text/html, no HX-Request) is answered 303 with no item to record:
    # test_browser_nojs covers it; here the answers the ledger can read.
    if hx or ("text/html" in accept and "application/json" not in accept):
        headers["hx-request"] = "true"
    kind, payload = body
    if kind == "form":
        response = client.post(path, data=payload, headers=headers)
    elif kind == "multipart":
        files = {k: (None, v) for k, v in payload.items()} or {"x": (None, b"")}
        response = client.post(path, files=files, headers=headers)
    else:
        content_type, raw = payload
        if content_type:
            headers["content-type"] = content_type
        response = client.post(path, content=raw, headers=headers)
    WRITE_ANSWERS[response.status_code] += 1
    assert response.status_code in {200, 201, 400, 413, 422}, (response.status_code, response.text)
    if path == "/counter/increment":
        assert response.status_code == 200
    if response.status_code >= 400:
        assert "Traceback" not in response.text
        assert response.text.strip()


get_paths = st.one_of(
    st.sampled_from(
        ["/", "/fragments/counter", "/fragments/presence", "/fragments/activity", "/metrics"]
    ),
    st.builds("/fragments/activity/{}".format, st.text(max_size=25)),
    st.builds("/fragments/activity/{}".format, st.integers(min_value=-(2**70), max_value=2**70)),
    st.builds("/fragments/{}".format, st.text(max_size=25)),
    st.builds("/static/{}".format, st.text(max_size=25)),
    st.builds("/{}".format, st.text(max_size=40)),
)
queries = st.dictionaries(
    st.one_of(st.sampled_from(["after", "before", "last_event_id"]), st.text(max_size=6)),
    st.one_of(st.integers(min_value=-(2**70), max_value=2**70).map(str), st.text(max_size=25)),
    max_size=3,
)


@FUZZ
@given(
    path=get_paths,
    query=queries,
    accept=accepts,
    etag=st.one_of(
        st.none(), st.text(alphabet=st.characters(max_codepoint=0x7E, min_codepoint=0x20))
    ),
)
def test_fuzz_reads_never_get_a_5xx(
    site: Site,
    fuzz_client: httpx.Client,
    path: str,
    query: dict[str, str],
    accept: str,
    etag: str | None,
) -> None:
    assume(not path.startswith(("/events", "/healthz")))  # a stream; readiness may be 503
    headers = {"accept": accept}
    if etag and etag.strip():
        headers["if-none-match"] = etag.strip()  # a header value has no outer spaces
    try:
        request = fuzz_client.build_request("GET", path, params=query, headers=headers)
    except httpx.InvalidURL:
        assume(False)
        return
    assume(request.url.netloc == httpx.URL(site.base_url).netloc)  # "//host" is another site
    assume(not request.url.path.startswith(("/events", "/healthz")))
    response = fuzz_client.send(request)
    assert response.status_code in {200, 304, 400, 404, 405, 410}, (
        request.url,
        response.status_code,
        response.text[:200],
    )
    assert "Traceback" not in response.text


latin1_header = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"),
    max_size=40,
)


async def _open_once(base_url: str, path: str, headers: dict[str, str]) -> None:
    stream = await SSEClient.connect(base_url, path, headers=headers, timeout=5)
    try:
        assert stream.status in {200, 400}, (path, headers, stream.status)
        if stream.status == 200:
            first = await stream.next_event(timeout=5)
            assert first.event == "ping"
        else:
            assert "Traceback" not in (await stream.read_body(timeout=5)).decode("latin-1")
    finally:
        await stream.aclose()


@FUZZ
@given(
    header=st.one_of(st.none(), latin1_header, st.integers().map(str)),
    query=st.text(max_size=60),
    raw_query=st.booleans(),
)
def test_fuzz_the_event_stream_never_gets_a_5xx(
    site: Site, header: str | None, query: str, raw_query: bool
) -> None:
    # Either percent-encoded text, or text with its own (possibly broken) % escapes kept.
    encoded = quote(query, safe="=&%;+" if raw_query else "")
    path = f"/events?last_event_id={encoded}" if not raw_query else f"/events?{encoded}"
    headers = {} if header is None else {"last-event-id": header}
    asyncio.run(_open_once(site.base_url, path, headers))


# -- moderation ------------------------------------------------------------------------------


async def test_hide_resyncs_every_open_stream_and_the_fragment_answers_410(site: Site) -> None:
    async with await site.arrive() as ann:
        item_id = (await ann.post("please hide me")).json()["id"]
        html = await ann.get(f"/fragments/activity/{item_id}", headers={"accept": "text/html"})
        assert html.status_code == 200  # now rendered and cached by a worker
        streams = [
            await SSEClient.connect(site.base_url, f"/events?last_event_id={item_id}")
            for _ in range(6)
        ]
        try:
            for stream in streams:
                await stream.wait_for_event("ping", timeout=5)
            done = await asyncio.to_thread(_cli, site, "hide", str(item_id))
            assert done.returncode == 0, done.stderr
            assert f"item {item_id} hidden" in done.stdout
            for stream in streams:
                await stream.wait_for_event("resync", timeout=10)
        finally:
            for stream in streams:
                await stream.aclose()
        for _ in range(4):  # whichever worker answers, cache or not
            for accept in ["text/html", "application/json"]:
                gone = await ann.get(f"/fragments/activity/{item_id}", headers={"accept": accept})
                _assert_readable_error(gone, 410)
        listed = (await ann.get(f"/fragments/activity?after={item_id - 1}")).json()["items"]
        assert item_id not in [item["id"] for item in listed]

        missing = await asyncio.to_thread(_cli, site, "hide", str(10**15))
        assert missing.returncode == 1
        assert "no item" in missing.stdout
        for bad in ["abc", "-5", "0", "9" * 30]:
            refused = await asyncio.to_thread(_cli, site, "hide", bad)
            assert refused.returncode == 2, (bad, refused)
            assert "feed item id" in refused.stderr
            assert "Traceback" not in refused.stderr


async def test_prune_removes_only_items_older_than_the_age(site: Site) -> None:
    async with await site.arrive() as ann:
        ids = [(await ann.post(f"prune candidate {n}")).json()["id"] for n in range(3)]
        old = ids[:2]
        await database.execute(
            site.db,
            "UPDATE activity SET created_at = now() - interval '10 days' WHERE id = ANY($1)",
            old,
        )
        before = await _counts(site)
        for bad in ["-1", "nan", "inf", "soon"]:
            refused = await asyncio.to_thread(_cli, site, "prune", "--older-than", bad)
            assert refused.returncode == 2, (bad, refused)
            assert "Traceback" not in refused.stderr
        assert await _counts(site) == before

        async with SSEClient.open(site.base_url, f"/events?last_event_id={ids[-1]}") as stream:
            await stream.wait_for_event("ping", timeout=5)
            done = await asyncio.to_thread(_cli, site, "prune", "--older-than", "5")
            assert done.returncode == 0, done.stderr
            assert "removed 2 items" in done.stdout
            site.ledger.pruned.update(old)
            await stream.wait_for_event("resync", "pruned", timeout=10)
        for item_id in old:
            _assert_readable_error(await ann.get(f"/fragments/activity/{item_id}"), 404)
        assert (await ann.get(f"/fragments/activity/{ids[2]}")).status_code == 200
        remaining = await database.fetch(site.db, "SELECT id FROM activity WHERE id = ANY($1)", ids)
        assert [row["id"] for row in remaining] == [ids[2]]
        again = await asyncio.to_thread(_cli, site, "prune", "--older-than", "5")
        assert "removed 0 items" in again.stdout


# -- nothing lost ----------------------------------------------------------------------------


async def test_event_stream_is_get_only(site: Site) -> None:
    async with await Visitor.arrive(site.base_url) as visitor:  # sends a valid CSRF token
        for method in ("POST", "DELETE", "PUT"):
            response = await visitor.client.request(method, "/events")
            assert response.status_code == 405
            assert response.headers["allow"] == "GET, HEAD"


async def test_normal_use_still_works_among_the_attacks(site: Site) -> None:
    async with await site.arrive() as normal:
        normal_id = normal.cookies()[COOKIE].split(".")[1]
        async with SSEClient.open(site.base_url, cookies=normal.cookie_header()) as stream:
            site.ledger.streamers.add(normal_id)
            await stream.wait_for_event("ping", timeout=5)
            item_id = (await normal.post("still working")).json()["id"]
            await stream.wait_for_event("activity", str(item_id), timeout=5)
            before = (await normal.get("/fragments/counter")).json()["value"]
            value = (await normal.increment()).json()["value"]
            assert value > before
            await stream.wait_for_event("counter", timeout=5)
        fragment = await normal.get(f"/fragments/activity/{item_id}")
        assert fragment.json()["body"] == "still working"


async def _database_holds_exactly_the_accepted_writes(site: Site) -> None:
    """Checked when the module's server stops, whatever ran: every 200/201 is a row,
    nothing refused is, and the server logged no error."""
    ledger = site.ledger
    messages = await database.fetch(site.db, "SELECT id FROM activity WHERE kind = 'message'")
    assert {row["id"] for row in messages} == ledger.messages - ledger.pruned
    counter, _items, _people = await _counts(site)
    assert counter == ledger.increments
    renamed = await database.fetchval(
        site.db, "SELECT count(*) FROM activity WHERE kind = 'renamed'"
    )
    assert renamed == ledger.renamed
    people = await database.fetch(site.db, "SELECT id, name FROM visitors")
    assert {row["id"].hex for row in people} == ledger.writers | ledger.streamers
    for row in people:
        if row["id"].hex in ledger.names:
            assert row["name"] == ledger.names[row["id"].hex]
    joined = await database.fetchval(site.db, "SELECT count(*) FROM activity WHERE kind = 'joined'")
    assert joined == 0  # going online is no feed item (watching makes no page fetch anything)
    if WRITE_ANSWERS:  # the write fuzzing ran: it reached past CSRF into validators and writes
        assert {200, 201, 422} <= set(WRITE_ANSWERS), WRITE_ANSWERS

    log = site.server.log_text()
    assert "unhandled error" not in log
    assert "Traceback" not in log
    assert "database unavailable" not in log
