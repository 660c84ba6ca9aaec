"""Reading a Prosody data directory and writing it to meshxmpp storage (no network).

The files under ``data/prosody`` are real Prosody 0.12.3 output (Debian's package): accounts made
with ``prosodyctl register``, rosters written by Prosody's own datamanager and serializer
(``data/mkroster.lua``); ``data/README.md`` lists the passwords.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from meshxmpp.c2s.sasl import derive_credentials
from meshxmpp.importer.lua import FALSE
from meshxmpp.importer.prosody import (
    ProsodyDataError,
    account_credentials,
    apply,
    decode_name,
    encode_name,
    read_host,
    roster_items,
)
from meshxmpp.storage import MemoryStorage
from meshxmpp.storage.base import RosterItem
from meshxmpp.xml.stream import parse_element

DATA = Path(__file__).parent / "data" / "prosody"
PASSWORDS = {
    "alice@example.org": 'pässword "q"',
    "bob.smith@example.org": "hunter2",
    "carol@plain.example": "plainpw",
    "dävid@müller.example": "s3cret",
    "erin@sha256.example": "erin-pw",
}


@pytest.mark.parametrize(
    ("name", "encoded"),
    [("example.org", "example%2eorg"), ("bob.smith", "bob%2esmith"), ("müller.example", "m%c3%bcller%2eexample"),
     ("a_b-c", "a%5fb%2dc"), ("ABC123", "ABC123")],
)
def test_names(name: str, encoded: str) -> None:
    assert encode_name(name) == encoded
    assert decode_name(encoded) == name
    assert decode_name(encoded.replace("%2e", "%2E")) == name  # upper-case hex decodes too


@pytest.mark.parametrize("bad", ["", "a.b", "%zz", "%2", "a%", "%ff%fe", "a b"])
def test_bad_names(bad: str) -> None:
    with pytest.raises(ValueError):
        decode_name(bad)


@pytest.mark.parametrize("user", sorted(PASSWORDS))
def test_fixture_credentials_are_the_prosody_password(user: str) -> None:
    local, domain = user.split("@")
    host = read_host(DATA, domain)
    [account] = [a for a in host.accounts if a.user == user]
    assert account.creds is not None and account.problem is None
    for hash_name, creds in account.creds.items():
        expected = derive_credentials(PASSWORDS[user], iterations=creds.iterations, salt=creds.salt)[hash_name]
        assert creds == expected
    assert account.kind == {"carol": "plain password", "erin": "SCRAM-SHA-256"}.get(local, "SCRAM-SHA-1")
    assert sorted(account.creds) == {"carol": ["SHA-1", "SHA-256"], "erin": ["SHA-256"]}.get(local, ["SHA-1"])


def test_fixture_roster() -> None:
    host = read_host(DATA, "example.org")
    alice = {item.jid: item for item in host.rosters["alice@example.org"]}
    assert alice["bob.smith@example.org"] == RosterItem(
        "bob.smith@example.org", name='Bob "B" Smith', subscription="both", groups=("Friends", "Wörk"))
    assert alice["carol@plain.example"] == RosterItem("carol@plain.example", ask=True)
    assert alice["frank@remote.example"] == RosterItem(
        "frank@remote.example", subscription="from", approved=True, groups=("Family",))
    assert alice["grace@remote.example"].name == "Tab\tand \\ back"  # \1 cannot go in XML
    assert alice["erin@example.org"] == RosterItem("erin@example.org", pending_in=True, hidden=True)
    dave = alice["dave@remote.example"]
    assert dave.hidden and dave.pending_in and dave.pending_in_stanza is not None
    stanza = parse_element(dave.pending_in_stanza)
    assert (stanza.name, stanza.get("type"), stanza.get("from"), stanza.get("to")) == (
        "presence", "subscribe", "dave@remote.example", "alice@example.org")
    assert stanza.find("status") is not None and stanza.find("status").text == 'Hi Alice, it\'s "Dave"\n— ok?'  # type: ignore[union-attr]
    assert any("grace@remote.example: name" in w for w in host.warnings)
    assert host.rosters["bob.smith@example.org"] == [RosterItem("alice@example.org", subscription="both")]


def test_unknown_host_and_not_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ProsodyDataError, match="no Prosody host 'nope.example'.*nope%2eexample.*example.org"):
        read_host(DATA, "nope.example")
    with pytest.raises(ProsodyDataError, match="not a directory"):
        read_host(tmp_path / "missing", "example.org")


def test_sql_storage_is_named(tmp_path: Path) -> None:
    (tmp_path / "prosody.sqlite").write_bytes(b"SQLite format 3\x00")
    with pytest.raises(ProsodyDataError, match="prosody-migrator"):
        read_host(tmp_path, "example.org")


@pytest.mark.parametrize(
    ("record", "problem"),
    [
        ({}, "stored_key missing"),
        ({"password": ""}, "stored_key missing"),
        ({"hashed_password": "ab", "salt": "s", "iteration_count": 1}, "Prosody 0.8"),
        ({"stored_key": "zz", "server_key": "00", "salt": "s", "iteration_count": 1}, "not hexadecimal"),
        ({"stored_key": "00" * 16, "server_key": "00" * 16, "salt": "s", "iteration_count": 1}, "match no hash"),
        ({"stored_key": "00" * 20, "server_key": "00" * 32, "salt": "s", "iteration_count": 1}, "match no hash"),
        ({"stored_key": "00" * 20, "server_key": "00" * 20, "iteration_count": 1}, "salt missing"),
        ({"stored_key": "00" * 20, "server_key": "00" * 20, "salt": "", "iteration_count": 1}, "empty salt"),
        ({"stored_key": "00" * 20, "server_key": "00" * 20, "salt": "s"}, "iteration_count"),
        ({"stored_key": "00" * 20, "server_key": "00" * 20, "salt": "s", "iteration_count": 0}, "iteration_count"),
        ({"stored_key": "00" * 20, "server_key": "00" * 20, "salt": "s", "iteration_count": 10**9},
         "iteration_count"),
        ({"stored_key": "00" * 20, "server_key": "00" * 20, "salt": "s", "iteration_count": True},
         "iteration_count"),
        ("not a table", "not a table"),
    ],
)
def test_bad_account_records(record: object, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        account_credentials(record)  # type: ignore[arg-type]


def test_roster_oddities() -> None:
    warnings: list[str] = []
    table = {
        "Bob@Example.ORG": {"subscription": "both", "groups": {"G": True, "": True, 5: True}},
        "bob@example.org": {"subscription": "to"},  # the same JID once normalised
        "full@example.org/res": {"subscription": "both"},
        "not a jid@": {"subscription": "both"},
        "x@example.org": "not a table",
        "y@example.org": {"subscription": "weird", "ask": "unsubscribe", "name": b"\xff"},
        "pending": {"z@example.org": True},  # Prosody 0.9's top-level pending requests
    }
    items = roster_items("alice@example.org", table, warnings)  # type: ignore[arg-type]
    assert items == [
        RosterItem("bob@example.org", subscription="both", groups=("G",)),
        RosterItem("y@example.org", name="\ufffd", subscription="none"),
        RosterItem("z@example.org", pending_in=True, hidden=True),
    ]
    text = "\n".join(warnings)
    for expected in ("given twice", "'full@example.org/res' is not a bare JID", "'not a jid@' is not a bare JID",
                     "x@example.org is not a table", "'weird' unknown", "not UTF-8"):
        assert expected in text


def test_pending_stanza_that_cannot_be_rebuilt_is_dropped_not_the_request() -> None:
    table = {FALSE: {"pending": {
        "a@example.org": {"name": "message", "attr": {}},  # not a presence
        "b@example.org": {"name": "bad name!", "attr": {}},  # not XML
        "c@example.org": {"name": "presence", "attr": {"xmlns": "jabber:client"},
                          1: {"name": "status", "attr": {}, 1: "hi <there> & \x01"}},
    }}}
    items = roster_items("alice@example.org", table, [])  # type: ignore[arg-type]
    assert [(i.jid, i.pending_in, i.pending_in_stanza is not None) for i in items] == [
        ("a@example.org", True, False), ("b@example.org", True, False), ("c@example.org", True, True)]
    assert parse_element(items[2].pending_in_stanza or "").find("status").text == "hi <there> & "  # type: ignore[union-attr]


def _broken_copy(tmp_path: Path) -> Path:
    data = tmp_path / "prosody"
    shutil.copytree(DATA, data)
    host = data / "example%2eorg"
    (host / "accounts" / "mallory.dat").write_text('return { password = os.execute("id") };\n')
    (host / "accounts" / "trent.dat").write_text("return { };\n")
    (host / "accounts" / "alice.dat~").write_text("scratch file Prosody leaves while writing")
    (host / "accounts" / "bad%zzname.dat").write_text('return { password = "x" };\n')
    (host / "roster" / "mallory.dat").write_text("return {")
    (host / "roster" / "ghost.dat").write_text('return { ["a@example.org"] = { subscription = "both" } };\n')
    (host / "offline").mkdir()
    (host / "offline" / "alice.list").write_text("item({});\n")
    (host / "vcard").mkdir()
    (host / "vcard" / "alice.dat").write_text("return {};\n")
    return data


async def test_apply_is_idempotent_and_dry_run_writes_nothing(tmp_path: Path) -> None:
    host = read_host(_broken_copy(tmp_path), "example.org")
    assert host.other_stores == {"offline": 1, "vcard": 1}
    assert any("bad%zzname" in w for w in host.warnings)
    assert any("roster/mallory.dat" in w and "unfinished table" in w for w in host.warnings)
    async with MemoryStorage() as storage:
        dry = await apply(storage, host, dry_run=True)
        assert dry.created == ["alice@example.org", "bob.smith@example.org"]
        assert [user for user, _ in dry.failed] == ["mallory@example.org", "trent@example.org"]
        assert "names are not data: 'os'" in dict(dry.failed)["mallory@example.org"]
        assert dry.items_added == 7 and dry.rosters_without_account == ["ghost@example.org"]
        assert await storage.accounts.list() == []
        assert await storage.rosters.items("alice@example.org") == []

        first = await apply(storage, host)
        assert first.created == dry.created and first.items_added == 7 and first.lines[-2:] == [
            line.replace("would be ", "").replace("would ", "") for line in dry.lines[-2:]]
        assert await storage.accounts.list() == ["alice@example.org", "bob.smith@example.org"]
        assert len(await storage.rosters.items("alice@example.org")) == 6

        # A user changed an item on meshxmpp; another was lost: a second run fills in only that one.
        await storage.rosters.put("alice@example.org", RosterItem("bob.smith@example.org", name="Bobby"))
        await storage.rosters.remove("alice@example.org", "carol@plain.example")
        second = await apply(storage, host)
        assert second.created == [] and second.existing == ["alice@example.org", "bob.smith@example.org"]
        assert (second.items_added, second.items_present) == (1, 6)
        assert (await storage.rosters.get("alice@example.org", "bob.smith@example.org")).name == "Bobby"  # type: ignore[union-attr]
        assert (await storage.rosters.get("alice@example.org", "carol@plain.example")).ask  # type: ignore[union-attr]
        # Credentials of existing accounts are never replaced.
        creds = await storage.accounts.get_credentials("alice@example.org")
        assert creds is not None and list(creds) == ["SHA-1"]
