"""SQLite specifics of room storage (the behaviour itself is in the conformance suite)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from sqlite_utils import Database

from meshxmpp.storage import RoomRecord, SqliteStorage
from meshxmpp.storage.sqlite import MIGRATIONS, migrate

ALICE = "alice@example.org"
ROOM = "lounge@conference.example.org"


def _record(**kw: object) -> RoomRecord:
    record = RoomRecord(jid=ROOM, config={"name": "Lounge", "persistent": True}, affiliations={ALICE: "owner"},
                        subject="hi", subject_by="alice", persistent=True,
                        occupants=[{"nick": "alice", "jids": [f"{ALICE}/a"]}], node="node0")
    for key, value in kw.items():
        setattr(record, key, value)
    return record


async def test_migration_3_upgrades_a_version_2_database(tmp_path: Path) -> None:
    """A database written before rooms existed keeps its data and gains the rooms table."""
    path = tmp_path / "db" / "meshxmpp.sqlite3"
    path.parent.mkdir()
    db = Database(path)
    assert migrate(db, MIGRATIONS[:2]) == 2
    db.execute("INSERT INTO accounts (user, creds) VALUES (?, '{}')", [ALICE])
    db.conn.commit()
    db.conn.close()

    async with SqliteStorage(path) as s:
        assert await s.accounts.exists(ALICE)
        assert await s.rooms.list() == []
        await s.rooms.put(_record())
    with sqlite3.connect(path) as raw:
        versions = [r[0] for r in raw.execute("SELECT version FROM schema_version ORDER BY version")]
    assert versions[:3] == [1, 2, 3]


async def test_rooms_survive_reopen_and_are_json(tmp_path: Path) -> None:
    path = tmp_path / "meshxmpp.sqlite3"
    async with SqliteStorage(path) as s:
        await s.rooms.put(_record())
        assert await s.rooms.set_occupants(ROOM, [], None)
    async with SqliteStorage(path) as s:
        assert await s.rooms.get(ROOM) == _record(occupants=[], node=None)
    # Operators can read the JSON columns with any SQLite tool.
    with sqlite3.connect(path) as raw:
        config, persistent = raw.execute("SELECT config_json, persistent FROM rooms").fetchone()
    assert config == '{"name": "Lounge", "persistent": true}' and persistent == 1


async def test_two_connections_see_each_others_mirror(tmp_path: Path) -> None:
    """Nodes sharing one file: the mirror one writes is what the other reads when it takes over."""
    path = tmp_path / "shared.sqlite3"
    async with SqliteStorage(path) as a, SqliteStorage(path) as b:
        await a.rooms.put(_record())
        assert await a.rooms.set_occupants(ROOM, [{"nick": "bob"}], "node1")
        got = await b.rooms.get(ROOM)
        assert got is not None and (got.occupants, got.node) == ([{"nick": "bob"}], "node1")
        assert await b.rooms.delete(ROOM)
        assert await a.rooms.get(ROOM) is None
