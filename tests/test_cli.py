"""The operator commands (`python -m app hide | prune`) run as subprocesses against a real
database of their own: a prune below one day needs --yes, and ids and days are ASCII digits
only (int() and float() read Arabic-Indic or fullwidth digits too)."""

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest
from support import database
from support.paths import REPO_ROOT
from support.server import APP_VARIABLES

# (item id, age in days): ids 1 to 6, so a misread "5" has an item to hit.
AGES = [(1, 10.0), (2, 3.0), (3, 0.5), (4, 0.0), (5, 0.0), (6, 0.0)]


def _feed_database(admin_url: str) -> Iterator[str]:
    """A migrated database of its own (prune deletes the whole feed) holding AGES."""
    url = asyncio.run(database.create_database(admin_url))
    try:
        database.migrate(url)
        asyncio.run(_fill(url))
        yield url
    finally:
        asyncio.run(database.drop_database(url, admin_url))


@pytest.fixture(scope="module")
def untouched_db(admin_url: str) -> Iterator[str]:
    """For commands that must change nothing: each test checks it still holds AGES."""
    yield from _feed_database(admin_url)


@pytest.fixture
def feed_db(admin_url: str) -> Iterator[str]:
    yield from _feed_database(admin_url)


async def _fill(url: str) -> None:
    conn = await database.connect(url)
    try:
        author = await conn.fetchval(
            "INSERT INTO visitors (id, name, name_key) VALUES (gen_random_uuid(), 'Op', 'op') "
            "RETURNING id"
        )
        for item_id, days in AGES:
            await conn.execute(
                "INSERT INTO activity (id, kind, author_id, author_name, body, created_at) "
                "VALUES ($1, 'message', $2, 'Op', $3, now() - make_interval(secs => $4))",
                item_id,
                author,
                f"item {item_id}",
                days * 86400,
            )
    finally:
        await conn.close()


def _run(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in APP_VARIABLES}
    env.update({"DATABASE_URL": url, "APP_ENV": "development"})
    return subprocess.run(
        [sys.executable, "-m", "app", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _items(url: str) -> dict[int, bool]:
    """Item id -> hidden."""
    rows = asyncio.run(database.fetch(url, "SELECT id, hidden_at FROM activity"))
    return {row["id"]: row["hidden_at"] is not None for row in rows}


ALL_VISIBLE = {item_id: False for item_id, _ in AGES}


@pytest.mark.parametrize("age", ["0", "0.5", "0.99"])
def test_a_prune_below_one_day_is_refused_without_yes(untouched_db: str, age: str) -> None:
    feed_db = untouched_db
    refused = _run(feed_db, "prune", "--older-than", age)
    assert refused.returncode == 2, refused
    assert "--yes" in refused.stderr
    assert "Nothing deleted" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert _items(feed_db) == ALL_VISIBLE


def test_a_prune_below_one_day_deletes_with_yes(feed_db: str) -> None:
    done = _run(feed_db, "prune", "--older-than", "0.25", "--yes")
    assert done.returncode == 0, done.stderr
    assert "removed 3 items" in done.stdout
    assert set(_items(feed_db)) == {4, 5, 6}
    everything = _run(feed_db, "prune", "--older-than", "0", "--yes")
    assert everything.returncode == 0, everything.stderr
    assert _items(feed_db) == {}


def test_a_prune_of_a_day_or_more_needs_no_confirmation(feed_db: str) -> None:
    done = _run(feed_db, "prune", "--older-than", "1")
    assert done.returncode == 0, done.stderr
    assert "removed 2 items" in done.stdout
    assert set(_items(feed_db)) == {3, 4, 5, 6}


@pytest.mark.parametrize(
    "days",
    ["\u0661", "\u0665", "\uff15", "\u0967", "1\u0660", "\u00b9", "1e3", "+1", " 1", "1.", ".5"],
)
def test_days_are_ascii_digits_only(untouched_db: str, days: str) -> None:
    feed_db = untouched_db
    refused = _run(feed_db, "prune", "--older-than", days, "--yes")
    assert refused.returncode == 2, (days, refused)
    assert "not a number of days" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert _items(feed_db) == ALL_VISIBLE


@pytest.mark.parametrize("item", ["\u0665", "\uff15", "\u09eb", "\u2075", "+5", " 5", "5 "])
def test_item_ids_are_ascii_digits_only(untouched_db: str, item: str) -> None:
    feed_db = untouched_db
    refused = _run(feed_db, "hide", item)
    assert refused.returncode == 2, (item, refused)
    assert "feed item id" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert _items(feed_db) == ALL_VISIBLE  # item 5 in particular stays visible


def test_hide_with_ascii_digits_hides_that_item(feed_db: str) -> None:
    done = _run(feed_db, "hide", "5")
    assert done.returncode == 0, done.stderr
    assert _items(feed_db) == {**ALL_VISIBLE, 5: True}
