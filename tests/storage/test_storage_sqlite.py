"""What only SQLite has: files, schema migrations, WAL, and the worker thread."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest
import trio
import trio.testing
from sqlite_utils import Database

from meshxmpp.c2s.sasl import ScramCredentials, derive_credentials
from meshxmpp.storage import RosterItem, SqliteStorage, StorageClosedError
from meshxmpp.storage.sqlite import MIGRATIONS, SchemaError, migrate, schema_version

ALICE = "alice@example.org"
BOB = "bob@example.org"

CREDS = {
    "SHA-1": ScramCredentials(
        hash_name="SHA-1",
        salt=b"\x00salt\xff",
        iterations=4096,
        stored_key=b"\x01" * 20,
        server_key=b"\x02" * 20,
    ),
    "SHA-256": ScramCredentials(
        hash_name="SHA-256",
        salt=b"\xfe" * 16,
        iterations=4096,
        stored_key=b"\x03" * 32,
        server_key=b"\x00" * 32,
    ),
}


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "meshxmpp.sqlite3"


def _raw(path: Path) -> sqlite3.Connection:
    """A second, independent connection: sees only what was committed."""
    return sqlite3.connect(str(path))


def _schema(db: Database) -> list[tuple[str, str]]:
    return [
        (r[0], r[1])
        for r in db.execute("SELECT name, sql FROM sqlite_master WHERE sql IS NOT NULL ORDER BY name")
    ]


async def test_data_survives_close_and_reopen(db_path: Path) -> None:
    s = SqliteStorage(db_path)
    await s.open()
    await s.accounts.create(ALICE, CREDS)
    item = RosterItem(BOB, name="Bob", subscription="both", groups=("b", "a"), approved=True)
    await s.rosters.put(ALICE, item)
    await s.rosters.put(
        ALICE, RosterItem("eve@example.org", pending_in=True, pending_in_stanza="<p/>", hidden=True)
    )
    for i in range(3):
        await s.offline.store(ALICE, f"<m{i}/>", stamp=1000.5 + i, limit=10)
    before = await s.offline.fetch(ALICE)
    await s.offline.delete(ALICE, [before[-1].id])  # the newest id must stay used after reopen
    await s.close()

    async with SqliteStorage(db_path) as s2:
        assert await s2.accounts.list() == [ALICE]
        assert await s2.accounts.get_credentials(ALICE) == CREDS
        assert await s2.rosters.get(ALICE, BOB) == item
        assert len(await s2.rosters.items(ALICE)) == 2
        assert await s2.offline.fetch(ALICE) == before[:-1]
        await s2.offline.store(ALICE, "<new/>", stamp=2000.0, limit=10)
        assert (await s2.offline.fetch(ALICE))[-1].id > before[-1].id


async def test_acknowledged_writes_are_committed(db_path: Path) -> None:
    async with SqliteStorage(db_path) as s:
        await s.accounts.create(ALICE, CREDS)
        await s.offline.store(ALICE, "<m/>", stamp=1.0, limit=10)
        await s.rosters.put(ALICE, RosterItem(BOB))
        # without closing: another connection already sees every write
        with _raw(db_path) as raw:
            assert raw.execute("SELECT user FROM accounts").fetchall() == [(ALICE,)]
            assert raw.execute("SELECT stanza FROM offline").fetchall() == [("<m/>",)]
            assert raw.execute("SELECT jid FROM roster").fetchall() == [(BOB,)]
        await s.accounts.delete(ALICE)
        with _raw(db_path) as raw:
            for table in ("accounts", "offline", "roster"):
                assert raw.execute(f"SELECT COUNT(*) FROM {table}").fetchone() == (0,)


async def test_schema_version_recorded(db_path: Path) -> None:
    async with SqliteStorage(db_path):
        pass
    with _raw(db_path) as raw:
        versions = [r[0] for r in raw.execute("SELECT version FROM schema_version ORDER BY version")]
    assert versions == list(range(1, len(MIGRATIONS) + 1))
    assert schema_version(Database(db_path)) == len(MIGRATIONS)


async def test_migrations_are_idempotent(db_path: Path) -> None:
    async with SqliteStorage(db_path):
        pass
    db = Database(db_path)
    schema = _schema(db)
    rows = db.execute("SELECT * FROM schema_version").fetchall()
    assert {"accounts", "roster", "offline", "offline_user", "schema_version"} <= {n for n, _ in schema}

    # migrate() again, and reopening, change nothing
    assert migrate(db) == len(MIGRATIONS)
    async with SqliteStorage(db_path):
        pass
    assert _schema(db) == schema
    assert db.execute("SELECT * FROM schema_version").fetchall() == rows

    # each migration body is itself safe to run twice
    for m in MIGRATIONS:
        m(db)
    assert _schema(db) == schema


def test_migrations_apply_in_order_once(tmp_path: Path) -> None:
    db = Database(tmp_path / "m.sqlite3")
    calls: list[str] = []

    def m2(db: Database) -> None:
        calls.append("m2")
        db.execute("CREATE TABLE extra (x INTEGER)")

    def m3(db: Database) -> None:
        calls.append("m3")
        db.execute("INSERT INTO extra (x) VALUES (3)")

    assert migrate(db, [*MIGRATIONS, m2]) == len(MIGRATIONS) + 1
    assert migrate(db, [*MIGRATIONS, m2, m3]) == len(MIGRATIONS) + 2
    assert migrate(db, [*MIGRATIONS, m2, m3]) == len(MIGRATIONS) + 2
    assert calls == ["m2", "m3"]
    assert db.execute("SELECT x FROM extra").fetchall() == [(3,)]


def test_failed_migration_rolls_back(tmp_path: Path) -> None:
    db = Database(tmp_path / "m.sqlite3")
    migrate(db)

    def broken(db: Database) -> None:
        db.execute("CREATE TABLE half (x INTEGER)")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        migrate(db, [*MIGRATIONS, broken])
    assert schema_version(db) == len(MIGRATIONS)
    assert not db.table("half").exists()


async def test_newer_schema_is_refused(db_path: Path) -> None:
    async with SqliteStorage(db_path):
        pass
    with _raw(db_path) as raw:
        raw.execute("INSERT INTO schema_version (version, applied_at) VALUES (?, 0)", [len(MIGRATIONS) + 1])
    s = SqliteStorage(db_path)
    with pytest.raises(SchemaError):
        await s.open()
    with pytest.raises(StorageClosedError):
        await s.accounts.list()


async def test_wal_and_pragmas(db_path: Path) -> None:
    async with SqliteStorage(db_path) as s:
        pragmas = await s._run(
            lambda db: tuple(
                db.execute(f"PRAGMA {p}").fetchone()[0]
                for p in ("journal_mode", "synchronous", "foreign_keys")
            )
        )
        assert pragmas == ("wal", 1, 1)  # synchronous 1 = NORMAL
    with _raw(db_path) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone() == ("wal",)  # persistent in the file


async def test_open_close_lifecycle(db_path: Path) -> None:
    s = SqliteStorage(db_path)
    with pytest.raises(StorageClosedError):
        await s.accounts.exists(ALICE)
    await s.open()
    await s.open()  # idempotent
    assert db_path.parent.is_dir(), "open() creates the directory"
    await s.accounts.create(ALICE, CREDS)
    await s.close()
    await s.close()  # idempotent
    with pytest.raises(StorageClosedError):
        await s.offline.count(ALICE)
    await s.open()  # reopenable
    assert await s.accounts.exists(ALICE)
    await s.close()


async def test_close_waits_for_queued_operations(db_path: Path) -> None:
    s = SqliteStorage(db_path)
    await s.open()
    results: list[bool] = []

    async def store(i: int) -> None:
        try:
            results.append(await s.offline.store(ALICE, f"<m{i}/>", stamp=0.0, limit=100))
        except StorageClosedError:
            results.append(False)

    async with trio.open_nursery() as nursery:
        for i in range(20):
            nursery.start_soon(store, i)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(s.close)
    # operations queued before close() ran; none failed or half-ran
    async with SqliteStorage(db_path) as s2:
        assert await s2.offline.count(ALICE) == results.count(True)


async def test_event_loop_not_blocked(db_path: Path) -> None:
    """While SQLite works (held inside a statement), Trio tasks keep running."""
    s = SqliteStorage(db_path)
    await s.open()
    loop_thread = threading.get_ident()
    db_threads: set[int] = set()
    inside = trio.Event()
    release = threading.Event()
    first = True

    def progress() -> int:
        # Called by SQLite from whatever thread runs the statement.
        nonlocal first
        db_threads.add(threading.get_ident())
        if first:
            first = False
            trio.from_thread.run_sync(inside.set)  # only works from a Trio worker thread
            if not release.wait(timeout=30):
                return 1  # abort the statement: the loop never released us
        return 0

    await s._run(lambda db: db.conn.set_progress_handler(progress, 1))
    done = trio.Event()

    async def big_write() -> None:
        assert await s.offline.store(ALICE, "<message>" + "x" * 5_000_000 + "</message>", stamp=1.0, limit=10)
        done.set()

    ticks = 0
    async with trio.open_nursery() as nursery:
        nursery.start_soon(big_write)
        await inside.wait()  # the write is now in progress in the worker thread
        for _ in range(100):
            await trio.lowlevel.checkpoint()
            ticks += 1
        assert not done.is_set()
        release.set()
        await done.wait()

    assert ticks == 100
    assert loop_thread not in db_threads
    await s._run(lambda db: db.conn.set_progress_handler(None, 1))
    assert await s.offline.count(ALICE) == 1
    await s.close()


async def test_operations_never_overlap(db_path: Path) -> None:
    """One connection, one worker call at a time."""
    async with SqliteStorage(db_path) as s:
        active = 0
        peak = 0
        lock = threading.Lock()

        def probe(db: Database) -> None:
            nonlocal active, peak
            with lock:
                active += 1
                peak = max(peak, active)
            db.execute("SELECT COUNT(*) FROM offline").fetchone()
            with lock:
                active -= 1

        async with trio.open_nursery() as nursery:
            for _ in range(50):
                nursery.start_soon(s._run, probe)
        assert peak == 1


async def test_derived_credentials_round_trip(db_path: Path) -> None:
    creds = derive_credentials("pencil ✓", iterations=4096)
    async with SqliteStorage(db_path) as s:
        await s.accounts.create(ALICE, creds)
    async with SqliteStorage(db_path) as s:
        assert await s.accounts.get_credentials(ALICE) == creds


# --- migration 2: all-resources offline delivery (docs/offline.md) ---------------------------


async def test_migration_2_upgrades_a_version_1_database(db_path: Path) -> None:
    """A database written before migration 2 keeps its messages and gains the new tables."""
    db_path.parent.mkdir(parents=True)
    db = Database(db_path)
    assert migrate(db, MIGRATIONS[:1]) == 1
    db.execute("INSERT INTO accounts (user, creds) VALUES (?, '{}')", [ALICE])
    db.execute("INSERT INTO offline (user, stanza, stamp) VALUES (?, '<old/>', 1.0)", [ALICE])
    db.conn.commit()
    db.conn.close()

    async with SqliteStorage(db_path) as s:
        (old,) = await s.offline.fetch(ALICE)
        assert old.stanza == "<old/>"
        assert await s.offline.pending(ALICE, "phone") == [old], "an old message was delivered to nobody"
        await s.offline.remember_resource(ALICE, "phone", seen=5.0, forget_before=0.0)
        assert await s.offline.mark_delivered(ALICE, "phone", [old.id], known_since=0.0, expire_before=0.0) == [
            old.id
        ]
    with _raw(db_path) as raw:
        versions = [r[0] for r in raw.execute("SELECT version FROM schema_version ORDER BY version")]
        assert versions == list(range(1, len(MIGRATIONS) + 1))  # 2 and every later migration


async def test_delivery_records_and_known_resources_survive_reopen(db_path: Path) -> None:
    async with SqliteStorage(db_path) as s:
        for r in ("phone", "laptop"):
            await s.offline.remember_resource(ALICE, r, seen=10.0, forget_before=0.0)
        await s.offline.store(ALICE, "<m/>", stamp=20.0, limit=10)
        (m,) = await s.offline.fetch(ALICE)
        assert await s.offline.mark_delivered(ALICE, "phone", [m.id], known_since=0.0, expire_before=0.0) == []
        known = await s.offline.known_resources(ALICE)
    async with SqliteStorage(db_path) as s:
        assert await s.offline.known_resources(ALICE) == known
        assert await s.offline.pending(ALICE, "phone") == []
        assert await s.offline.pending(ALICE, "laptop") == [m]


async def test_mark_delivered_commits_records_and_deletions_together(db_path: Path) -> None:
    """A failure inside the transaction leaves neither the records nor the deletions."""
    async with SqliteStorage(db_path) as s:
        for r in ("phone", "laptop"):
            await s.offline.remember_resource(ALICE, r, seen=10.0, forget_before=0.0)
        for i in range(2):
            await s.offline.store(ALICE, f"<m{i}/>", stamp=20.0, limit=10)
        first, second = await s.offline.fetch(ALICE)
        await s.offline.mark_delivered(ALICE, "laptop", [first.id], known_since=0.0, expire_before=0.0)
        # Make the DELETE fail after the INSERTs of the same call have run.
        await s._run(lambda db: db.execute(
            "CREATE TRIGGER boom BEFORE DELETE ON offline BEGIN SELECT RAISE(ABORT, 'boom'); END"))
        with pytest.raises(sqlite3.DatabaseError, match="boom"):
            await s.offline.mark_delivered(ALICE, "phone", [first.id, second.id], known_since=0.0,
                                           expire_before=0.0)
        await s._run(lambda db: db.execute("DROP TRIGGER boom"))
        assert await s.offline.fetch(ALICE) == [first, second]
        assert await s.offline.pending(ALICE, "phone") == [first, second], "no record of the failed call"
        with _raw(db_path) as raw:
            assert raw.execute("SELECT COUNT(*) FROM offline_delivered").fetchone() == (1,)


async def test_delivery_records_go_with_their_message(db_path: Path) -> None:
    async with SqliteStorage(db_path) as s:
        await s.accounts.create(ALICE, CREDS)
        await s.offline.remember_resource(ALICE, "phone", seen=1.0, forget_before=0.0)
        await s.offline.remember_resource(ALICE, "laptop", seen=1.0, forget_before=0.0)
        for i in range(3):
            await s.offline.store(ALICE, f"<m{i}/>", stamp=2.0, limit=10)
        ids = [m.id for m in await s.offline.fetch(ALICE)]
        await s.offline.mark_delivered(ALICE, "phone", ids, known_since=0.0, expire_before=0.0)
        await s.offline.delete(ALICE, ids[:1])
        await s.offline.expire(ALICE, before=0.0)
        with _raw(db_path) as raw:
            assert raw.execute("SELECT id FROM offline_delivered ORDER BY id").fetchall() == [(i,) for i in ids[1:]]
        await s.accounts.delete(ALICE)
        with _raw(db_path) as raw:
            for table in ("offline", "offline_delivered", "offline_resources"):
                assert raw.execute(f"SELECT COUNT(*) FROM {table}").fetchone() == (0,), table
