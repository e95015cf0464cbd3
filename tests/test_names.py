"""Names people can see: never invisible, never a pile of accents, never a copy of another
visitor's (in another case or width). The rules are pure functions, tested here directly;
the refusal of a copy is tested against the real server."""

import asyncio
import unicodedata
import uuid
from collections.abc import Callable

import httpx
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from support import database
from support.server import AppServer
from support.sse import SSEClient
from support.visitors import Visitor

from app import identity
from app.config import Settings
from app.services.visitors import name_key
from app.web.validation import (
    MAX_MARKS_IN_A_ROW,
    InvalidInput,
    clean_message,
    clean_name,
    is_invisible,
)

AppServerFactory = Callable[..., AppServer]
COOKIE = identity.COOKIE_NAME

# -- the rules, as pure functions ---------------------------------------------------------

INVISIBLE_ONLY = [
    "\u200b",  # zero width space
    "\u200b\u200c\u200d",
    "\u3164",  # Hangul filler
    "\u3164\u3164\u3164",
    "\uffa0",  # halfwidth Hangul filler
    "\u115f\u1160",  # Hangul choseong / jungseong fillers
    "\u2800",  # blank Braille pattern
    "\u2800\u2800",
    "\u180e",  # Mongolian vowel separator
    "\ufeff",
    "\u2060\u2061\u2062\u2063\u2064",
    "\u00ad",  # soft hyphen
    "\u034f",  # combining grapheme joiner
    "\u0301" * 39,  # combining marks alone
    "\u20dd",  # an enclosing mark alone
    "\ue000",  # private use
    "\U000e0041",  # a tag character
    " \u3000 ",  # ideographic space (NFKC: a space)
]


@pytest.mark.parametrize("raw", INVISIBLE_ONLY)
def test_names_without_a_visible_character_are_refused(raw: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        clean_name(raw)
    reason = str(refused.value)
    assert any(word in reason for word in ("visible", "invisible", "at least one", "combining"))


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("Ann\u200b", "invisible"),
        ("\u2060Ann", "invisible"),
        ("An\u00adn", "invisible"),
        ("Ann\u3164", "invisible"),
        ("Ann\u2800Lee", "invisible"),
        ("A\u200dB", "invisible"),
        ("Ann\ufeff", "invisible"),
        ("\u0301Ann", "cannot start with a combining mark"),
        ("a" + "\u0301" * 39, f"At most {MAX_MARKS_IN_A_ROW} combining marks"),
        ("Zalgo" + "\u0336\u0337\u0338\u0339", f"At most {MAX_MARKS_IN_A_ROW}"),
        ("ann\u202e", "direction"),
    ],
)
def test_invisible_and_stacked_characters_in_names_are_refused_with_a_reason(
    raw: str, reason: str
) -> None:
    with pytest.raises(InvalidInput, match=reason):
        clean_name(raw)


@pytest.mark.parametrize(
    ("raw", "cleaned"),
    [
        ("\uff21\uff4e\uff4e", "Ann"),  # fullwidth letters
        ("\ufb01ona", "fiona"),  # the fi ligature
        ("\u212bngstr\u00f6m", "\u00c5ngstr\u00f6m"),  # the Angstrom sign
        ("e\u0301", "\u00e9"),  # composed
        ("\u3000Ann\u3000", "Ann"),
        ("\u0938\u094d\u0924\u0947", "\u0938\u094d\u0924\u0947"),  # Devanagari with a virama
        ("\u0f66\u0f92\u0fb2\u0f74\u0f56", "\u0f66\u0f92\u0fb2\u0f74\u0f56"),  # a Tibetan stack
        ("\u2764\ufe0f", "\u2764\ufe0f"),  # an emoji with its variation selector
        ("Ann Lee", "Ann Lee"),
    ],
)
def test_names_are_nfkc_and_ordinary_scripts_pass(raw: str, cleaned: str) -> None:
    assert clean_name(raw) == cleaned


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ("Ann", "ANN"),
        ("Ann", "\uff21\uff4e\uff4e"),
        ("Ann", "\uff41\uff4e\uff4e"),
        ("Ann Lee", "ann  LEE"),
        ("Stra\u00dfe", "STRASSE"),
        ("\u00c5sa", "\u212bSA"),
    ],
)
def test_look_alike_names_share_one_key(one: str, other: str) -> None:
    assert name_key(clean_name(one)) == name_key(clean_name(other))


def test_different_names_have_different_keys() -> None:
    assert name_key("Ann") != name_key("Anne")
    assert name_key("Ann Lee") != name_key("AnnLee")


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("\u200b\u200b", "no visible character"),
        ("\u3164", "no visible character"),
        ("a" + "\u0301" * (MAX_MARKS_IN_A_ROW + 1), "combining marks"),
        ("\u0301hello", "cannot start with a combining mark"),
        ("ok " + "x\u0300\u0301\u0302\u0303\u0304" * 20, "combining marks"),
    ],
)
def test_messages_need_a_visible_character_and_few_stacked_marks(raw: str, reason: str) -> None:
    with pytest.raises(InvalidInput, match=reason):
        clean_message(raw)


def test_messages_keep_joiners_and_decomposed_accents() -> None:
    family = "\U0001f468\u200d\U0001f469\u200d\U0001f467"
    assert clean_message(f"hi {family}") == f"hi {family}"
    assert clean_message("Vi\u0323\u0302t") == "Vi\u0323\u0302t"  # two marks, decomposed


def _outcome(clean: Callable[[str], str], raw: str) -> tuple[str | None, str]:
    try:
        return clean(raw), ""
    except InvalidInput as error:
        return None, str(error)


def _longest_mark_run(text: str) -> int:
    longest = run = 0
    for char in text:
        run = run + 1 if unicodedata.category(char).startswith("M") else 0
        longest = max(longest, run)
    return longest


name_text = st.text(
    alphabet=st.one_of(
        st.characters(codec="utf-8"),
        st.sampled_from(list("\u0301\u0302\u0303\u20dd\u3164\u2800\u200b\u200d\uff21 a")),
    ),
    max_size=50,
)


@settings(max_examples=400, deadline=None)
@given(name_text)
@example("a\u0301\u0302\u0303")
@example("\uff21\u0301")
def test_an_accepted_name_is_normal_visible_and_stable(raw: str) -> None:
    name, reason = _outcome(clean_name, raw)
    if name is None:
        assert reason  # a readable reason
        return
    assert unicodedata.normalize("NFKC", name) == name
    assert not all(is_invisible(char) for char in name)
    assert not any(unicodedata.category(char) in {"Cf", "Cc", "Cs"} for char in name)
    assert not unicodedata.category(name[0]).startswith("M")
    assert _longest_mark_run(name) <= MAX_MARKS_IN_A_ROW
    assert clean_name(name) == name
    assert name_key(name_key(name)) == name_key(name)  # a key is its own key


@settings(max_examples=300, deadline=None)
@given(name_text)
def test_an_accepted_message_has_a_visible_character_and_few_stacked_marks(raw: str) -> None:
    text, reason = _outcome(clean_message, raw)
    if text is None:
        assert reason
        return
    assert not all(is_invisible(char) for char in text)
    assert _longest_mark_run(text) <= MAX_MARKS_IN_A_ROW
    assert clean_message(text) == text


# -- the real server: a name another visitor shows is refused ------------------------------


def _id(visitor: Visitor) -> str:
    return visitor.cookies()[COOKIE].split(".")[1]


async def _online(visitor: Visitor) -> dict[str, str]:
    listing = (await visitor.get("/fragments/presence")).json()
    return {v["id"]: v["name"] for v in listing["visitors"]}


async def _until(check: Callable[[], object], timeout: float, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.2)


def _refused_as_taken(response: httpx.Response) -> None:
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert "already used by someone else" in detail, detail


async def test_a_copy_of_another_visitors_name_is_refused_and_the_page_keeps_working(
    app_server: AppServerFactory, database_url: str
) -> None:
    server = await asyncio.to_thread(app_server, workers=2)
    tag = uuid.uuid4().hex[:6]
    chosen = f"Ann {tag}"
    async with (
        await Visitor.arrive(server.base_url) as ann,
        await Visitor.arrive(server.base_url) as bob,
    ):
        async with SSEClient.open(server.base_url, cookies=ann.cookie_header()) as ann_stream:
            await ann_stream.wait_for_event("ping", timeout=5)
            assert (await ann.rename(chosen)).status_code == 200

            fullwidth = "".join(chr(ord(c) + 0xFEE0) if c != " " else c for c in chosen)
            for copy in [chosen, chosen.upper(), chosen.lower(), fullwidth, f" {chosen}  "]:
                _refused_as_taken(await bob.rename(copy))
            # Ann herself may change the case of her own name.
            assert (await ann.rename(chosen.lower())).status_code == 200

            page = await bob.get("/", headers={"accept": "text/html"})
            assert page.status_code == 200
            assert (await bob.rename(f"Bob {tag}")).status_code == 200
            assert (await bob.post("still here")).status_code == 201
            online = await _online(bob)
            assert online[_id(ann)] == chosen.lower()

        # Offline, a name chosen less than a day ago is still hers ...
        await _until(lambda: _absent(bob, _id(ann)), 15, "ann offline")
        _refused_as_taken(await bob.rename(chosen.upper()))
        # ... and free a day after she chose it.
        await database.execute(
            database_url,
            "UPDATE visitors SET renamed_at = now() - interval '25 hours' WHERE id = $1",
            uuid.UUID(_id(ann)),
        )
        taken = await bob.rename(chosen.upper())
        assert taken.status_code == 200, taken.text


async def _absent(visitor: Visitor, visitor_id: str) -> bool:
    return visitor_id not in await _online(visitor)


async def test_a_generated_name_someone_shows_gets_a_suffix(
    app_server: AppServerFactory, database_url: str
) -> None:
    server = await asyncio.to_thread(app_server, workers=2)
    key = Settings.from_env({"DATABASE_URL": database_url, "SECRET_KEY": "test"}).signing_key
    guest = f"Calm Fox {uuid.uuid4().hex[:4]}"
    first, second = (identity.Identity(id=uuid.uuid4(), guest_name=guest) for _ in range(2))
    cookies = [f"{COOKIE}={identity.encode(who, key)}" for who in (first, second)]
    async with (
        await Visitor.arrive(server.base_url) as watcher,
        SSEClient.open(server.base_url, cookies=cookies[0]) as one,
    ):
        await one.wait_for_event("ping", timeout=5)
        async with SSEClient.open(server.base_url, cookies=cookies[1]) as two:
            await two.wait_for_event("ping", timeout=5)
            online = await _online(watcher)
            assert online[first.id.hex] == guest
            assert online[second.id.hex] == f"{guest} (2)"
        # A visitor cannot take the generated name of someone online either.
        _refused_as_taken(await watcher.rename(guest.lower()))


def test_the_migration_gives_existing_visitors_their_name_key(admin_url: str) -> None:
    url = asyncio.run(database.create_database(admin_url))
    try:
        database.migrate(url, "0001")
        names = {uuid.uuid4(): name for name in ["\uff21\uff4e\uff4e", "Ann  LEE", "Stra\u00dfe"]}
        for vid, name in names.items():
            asyncio.run(
                database.execute(url, "INSERT INTO visitors (id, name) VALUES ($1, $2)", vid, name)
            )
        database.migrate(url)
        rows = asyncio.run(database.fetch(url, "SELECT id, name_key, renamed_at FROM visitors"))
        assert {r["id"]: r["name_key"] for r in rows} == {
            vid: name_key(name) for vid, name in names.items()
        }
        assert sorted(r["name_key"] for r in rows) == ["ann", "ann lee", "strasse"]
        assert all(r["renamed_at"] is None for r in rows)
    finally:
        asyncio.run(database.drop_database(url, admin_url))
