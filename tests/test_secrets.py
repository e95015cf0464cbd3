"""Secrets and sessions against real servers: production refuses weak keys, a key rotation
with SECRET_KEY_FALLBACKS logs nobody out, and a CSRF cookie the server did not sign is
replaced by the next page or state-fragment GET."""

import asyncio
import os
import subprocess
import sys
from collections.abc import Callable

import httpx
from support.paths import REPO_ROOT
from support.server import APP_VARIABLES, AppServer

OLD_KEY = "old-key-" + "o" * 40
NEW_KEY = "new-key-" + "n" * 40


def _visitor_id(client: httpx.AsyncClient) -> str:
    value = client.cookies["ripple_visitor"]
    return value.split(".")[1]


def _plant(client: httpx.AsyncClient, value: str) -> None:
    """Replace the csrftoken cookie as a sibling subdomain or an old deploy would have."""
    client.cookies.delete("csrftoken")
    client.cookies.set("csrftoken", value, domain="127.0.0.1", path="/")


async def _post(client: httpx.AsyncClient, message: str, token: str) -> httpx.Response:
    return await client.post(
        "/activity",
        data={"message": message},
        headers={"x-csrftoken": token, "accept": "application/json"},
    )


def test_production_refuses_a_weak_secret_and_says_how_to_make_one(database_url: str) -> None:
    env = {k: v for k, v in os.environ.items() if k not in APP_VARIABLES}
    for secret in ["", "short", "ripple-development-secret"]:
        done = subprocess.run(
            [sys.executable, "-m", "app", "serve"],
            cwd=REPO_ROOT,
            env={
                **env,
                "APP_ENV": "production",
                "SECRET_KEY": secret,
                "DATABASE_URL": database_url,
            },
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 2, (secret, done.stdout, done.stderr)
        assert "secrets.token_urlsafe" in done.stderr, done.stderr
        assert "SECRET_KEY" in done.stderr


async def test_a_key_rotation_logs_nobody_out(app_server: Callable[..., AppServer]) -> None:
    first = await asyncio.to_thread(app_server, {"SECRET_KEY": OLD_KEY}, workers=1)
    async with httpx.AsyncClient(base_url=first.base_url, timeout=10) as client:
        await client.get("/")
        token_before = client.cookies["csrftoken"]
        who = _visitor_id(client)
        signed_before = client.cookies["ripple_visitor"]
        assert (await _post(client, "before the rotation", token_before)).status_code == 201
        await asyncio.to_thread(first.stop)

        rotated = await asyncio.to_thread(
            app_server, {"SECRET_KEY": NEW_KEY, "SECRET_KEY_FALLBACKS": OLD_KEY}, workers=1
        )
        client.base_url = httpx.URL(rotated.base_url)
        # The page loaded before the rotation can still post: its token verifies.
        after = await _post(client, "after the rotation", token_before)
        assert after.status_code == 201, after.text
        item = await client.get(
            f"/fragments/activity/{after.json()['id']}", headers={"accept": "application/json"}
        )
        assert item.json()["author_id"] == who
        # The identity is kept, and its cookie re-signed with the new key.
        page = await client.get("/")
        assert page.status_code == 200
        assert _visitor_id(client) == who
        assert client.cookies["ripple_visitor"] != signed_before
        assert client.cookies["csrftoken"] == token_before, "a verified token is kept"
        await asyncio.to_thread(rotated.stop)

        # Once the old key is dropped, the re-signed identity still holds.
        settled = await asyncio.to_thread(app_server, {"SECRET_KEY": NEW_KEY}, workers=1)
        client.base_url = httpx.URL(settled.base_url)
        await client.get("/")
        assert _visitor_id(client) == who
        token = client.cookies["csrftoken"]
        assert token != token_before, "a token only the dropped key signed is replaced"
        assert (await _post(client, "settled", token)).status_code == 201
