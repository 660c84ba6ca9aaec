"""SQLite storage through sqlite-utils, off the event loop.

Every blocking call (connect, queries, commits, close) runs in ``trio.to_thread.run_sync``
behind a ``CapacityLimiter(1)``: one connection, used by one worker thread at a time, so
operations are serialised and the loop never blocks (ARCHITECTURE.md convention 13).

Durability: every write runs in its own ``BEGIN IMMEDIATE`` transaction that is committed
inside the worker call, so a coroutine that returned has committed ("acknowledged means
committed"). WAL with ``synchronous=NORMAL`` survives process crashes; only a power loss can
drop the last transactions.

Several writers on one file (nodes sharing a host, docs/storage.md): every ``SqliteStorage``
has its own connection, and they may be in one process or many. WAL lets readers run while
one connection writes; a write transaction takes the write lock at ``BEGIN IMMEDIATE``, so a
read-then-write (quota, ``take``, ``claim``) never has to upgrade a read lock half-way (the
upgrade that fails with ``SQLITE_BUSY`` however long the busy timeout). A writer that finds
the lock held waits up to ``BUSY_TIMEOUT`` inside SQLite; whatever still comes back busy
(e.g. switching a fresh file to WAL while another process opens it) is retried as a whole
operation, each of which is one transaction or a read, until ``BUSY_RETRY_FOR`` has passed.

Cancellation: a call whose task is cancelled while queued for the worker does nothing; once
the worker has started it, the call completes (and commits) before the cancellation is seen.
"""

from __future__ import annotations

import base64
import json
import random
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import trio
from sqlite_utils import Database

from meshxmpp.c2s.sasl import ScramCredentials
from meshxmpp.storage.base import (
    KnownResource,
    OfflineMessage,
    RoomRecord,
    RosterItem,
    Storage,
    StorageClosedError,
)
from meshxmpp.storage.migrations import SQLITE_MIGRATIONS, SchemaError, migrate_sqlite, sqlite_schema_version

__all__ = ["BUSY_RETRY_FOR", "BUSY_TIMEOUT", "MIGRATIONS", "SchemaError", "SqliteStorage", "migrate", "schema_version"]

T = TypeVar("T")

# Seconds SQLite waits for another connection's write lock (PRAGMA busy_timeout) before a
# statement fails with "database is locked".
BUSY_TIMEOUT = 10.0
# Seconds an operation that still failed busy is retried (whole, after a rollback) before the
# error reaches the caller. Bounds how long close() may wait for the operation in flight.
BUSY_RETRY_FOR = 30.0
_SQLITE_BUSY = 5
_SQLITE_LOCKED = 6


def _is_busy(exc: BaseException) -> bool:
    """SQLITE_BUSY or SQLITE_LOCKED (any extended code): another connection holds a lock."""
    if not isinstance(exc, sqlite3.OperationalError):
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (_SQLITE_BUSY, _SQLITE_LOCKED)
    text = str(exc)
    return "database is locked" in text or "database table is locked" in text or "busy" in text


def _retry_busy(fn: Callable[[], T], *, retry_for: float = BUSY_RETRY_FOR) -> T:
    """Call ``fn`` (one whole transaction or read), again while it fails busy, for at most
    ``retry_for`` seconds, with jittered exponential back-off. Blocking: worker threads only."""
    deadline = time.monotonic() + retry_for
    delay = 0.002
    while True:
        try:
            return fn()
        except sqlite3.OperationalError as exc:
            left = deadline - time.monotonic()
            if not _is_busy(exc) or left <= 0:
                raise
            time.sleep(min(left, random.uniform(delay / 2, delay)))
            delay = min(delay * 2, 0.1)


def _rollback(db: Database) -> None:
    if db.conn.in_transaction:
        db.conn.execute("ROLLBACK")


@contextmanager
def _transaction(db: Database) -> Iterator[None]:
    # IMMEDIATE takes the write lock up front (waiting up to BUSY_TIMEOUT for it), so a
    # read-then-write (the offline quota, take, claim) cannot be interleaved with another
    # writer, even from another process, and never fails half-way on a lock upgrade.
    # Whatever fails, the connection leaves here outside any transaction, so the whole
    # operation can be retried (_retry_busy).
    db.conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        db.conn.execute("COMMIT")
    except BaseException:
        _rollback(db)
        raise


# --- migrations ---------------------------------------------------------------------------
# The schema lives in storage/migrations.py, shared with PostgreSQL; these names stay here for
# the callers and tests that have always imported them from this module.

MIGRATIONS = SQLITE_MIGRATIONS
migrate = migrate_sqlite
schema_version = sqlite_schema_version


# --- row conversion ---------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _creds_to_json(creds: dict[str, ScramCredentials]) -> str:
    return json.dumps(
        {
            key: {
                "hash_name": c.hash_name,
                "salt": _b64(c.salt),
                "iterations": c.iterations,
                "stored_key": _b64(c.stored_key),
                "server_key": _b64(c.server_key),
            }
            for key, c in creds.items()
        },
        sort_keys=True,
    )


def _creds_from_json(text: str) -> dict[str, ScramCredentials]:
    raw: dict[str, dict[str, Any]] = json.loads(text)
    return {
        key: ScramCredentials(
            hash_name=c["hash_name"],
            salt=base64.b64decode(c["salt"]),
            iterations=int(c["iterations"]),
            stored_key=base64.b64decode(c["stored_key"]),
            server_key=base64.b64decode(c["server_key"]),
        )
        for key, c in raw.items()
    }


def _item_to_row(user: str, item: RosterItem) -> dict[str, Any]:
    return {
        "user": user,
        "jid": item.jid,
        "name": item.name,
        "subscription": item.subscription,
        "ask": int(item.ask),
        "pending_in": int(item.pending_in),
        "pending_in_stanza": item.pending_in_stanza,
        "approved": int(item.approved),
        "groups_json": json.dumps(list(item.groups)),
        "hidden": int(item.hidden),
    }


def _item_from_row(row: dict[str, Any]) -> RosterItem:
    return RosterItem(
        jid=row["jid"],
        name=row["name"],
        subscription=row["subscription"],
        ask=bool(row["ask"]),
        pending_in=bool(row["pending_in"]),
        pending_in_stanza=row["pending_in_stanza"],
        approved=bool(row["approved"]),
        groups=tuple(json.loads(row["groups_json"])),
        hidden=bool(row["hidden"]),
    )


_ROOM_COLUMNS = "jid, config_json, affiliations_json, subject, subject_by, persistent, occupants_json, node"


def _room_to_row(record: RoomRecord) -> tuple[Any, ...]:
    return (
        record.jid,
        json.dumps(record.config, sort_keys=True),
        json.dumps(record.affiliations, sort_keys=True),
        record.subject,
        record.subject_by,
        int(record.persistent),
        json.dumps(record.occupants, sort_keys=True),
        record.node,
    )


def _room_from_row(row: tuple[Any, ...]) -> RoomRecord:
    jid, config, affiliations, subject, subject_by, persistent, occupants, node = row
    return RoomRecord(
        jid=str(jid),
        config=json.loads(config),
        affiliations=json.loads(affiliations),
        subject=subject,
        subject_by=subject_by,
        persistent=bool(persistent),
        occupants=json.loads(occupants),
        node=node,
    )


def _delete_messages(db: Database, where: str, params: list[Any] | dict[str, Any]) -> list[int]:
    """Delete the offline messages matching ``where`` with their delivery records (inside the
    caller's transaction); returns their ids, ascending."""
    ids = [int(r[0]) for r in db.execute(f"SELECT id FROM offline WHERE {where} ORDER BY id", params)]
    if ids:
        rows = [(i,) for i in ids]
        db.conn.executemany("DELETE FROM offline_delivered WHERE id = ?", rows)
        db.conn.executemany("DELETE FROM offline WHERE id = ?", rows)
    return ids


# --- the three parts ----------------------------------------------------------------------


class SqliteAccounts:
    def __init__(self, storage: SqliteStorage) -> None:
        self._run = storage._run

    async def create(self, user: str, creds: dict[str, ScramCredentials]) -> bool:
        blob = _creds_to_json(creds)

        def op(db: Database) -> bool:
            with _transaction(db):
                cur = db.execute(
                    "INSERT INTO accounts (user, creds) VALUES (?, ?) ON CONFLICT (user) DO NOTHING",
                    [user, blob],
                )
                return cur.rowcount == 1

        return await self._run(op)

    async def get_credentials(self, user: str) -> dict[str, ScramCredentials] | None:
        def op(db: Database) -> str | None:
            row = db.execute("SELECT creds FROM accounts WHERE user = ?", [user]).fetchone()
            return None if row is None else str(row[0])

        text = await self._run(op)
        return None if text is None else _creds_from_json(text)

    async def set_credentials(self, user: str, creds: dict[str, ScramCredentials]) -> bool:
        blob = _creds_to_json(creds)

        def op(db: Database) -> bool:
            with _transaction(db):
                cur = db.execute("UPDATE accounts SET creds = ? WHERE user = ?", [blob, user])
                return cur.rowcount == 1

        return await self._run(op)

    async def delete(self, user: str) -> bool:
        def op(db: Database) -> bool:
            with _transaction(db):
                if db.execute("DELETE FROM accounts WHERE user = ?", [user]).rowcount != 1:
                    return False
                db.execute("DELETE FROM roster WHERE user = ?", [user])
                _delete_messages(db, "user = ?", [user])
                db.execute("DELETE FROM offline_resources WHERE user = ?", [user])
                return True

        return await self._run(op)

    async def exists(self, user: str) -> bool:
        def op(db: Database) -> bool:
            return db.execute("SELECT 1 FROM accounts WHERE user = ?", [user]).fetchone() is not None

        return await self._run(op)

    async def list(self) -> list[str]:
        def op(db: Database) -> list[str]:
            return [str(r[0]) for r in db.execute("SELECT user FROM accounts ORDER BY user")]

        return await self._run(op)


class SqliteRosters:
    def __init__(self, storage: SqliteStorage) -> None:
        self._run = storage._run

    async def items(self, user: str) -> list[RosterItem]:
        def op(db: Database) -> list[RosterItem]:
            rows = db.table("roster").rows_where("user = ?", [user], order_by="jid")
            return [_item_from_row(r) for r in rows]

        return await self._run(op)

    async def get(self, user: str, jid: str) -> RosterItem | None:
        def op(db: Database) -> RosterItem | None:
            for row in db.table("roster").rows_where("user = ? AND jid = ?", [user, jid]):
                return _item_from_row(row)
            return None

        return await self._run(op)

    async def put(self, user: str, item: RosterItem) -> None:
        row = _item_to_row(user, item)

        def op(db: Database) -> None:
            with _transaction(db):
                db.table("roster").upsert(row, pk=("user", "jid"))

        await self._run(op)

    async def remove(self, user: str, jid: str) -> bool:
        def op(db: Database) -> bool:
            with _transaction(db):
                cur = db.execute("DELETE FROM roster WHERE user = ? AND jid = ?", [user, jid])
                return cur.rowcount == 1

        return await self._run(op)


class SqliteOffline:
    def __init__(self, storage: SqliteStorage) -> None:
        self._run = storage._run

    async def store(self, user: str, stanza: str, *, stamp: float, limit: int) -> bool:
        def op(db: Database) -> bool:
            # Count and insert in one write transaction: the quota holds under concurrency.
            with _transaction(db):
                (n,) = db.execute("SELECT COUNT(*) FROM offline WHERE user = ?", [user]).fetchone()
                if n >= limit:
                    return False
                db.execute(
                    "INSERT INTO offline (user, stanza, stamp) VALUES (?, ?, ?)", [user, stanza, float(stamp)]
                )
                return True

        return await self._run(op)

    async def count(self, user: str) -> int:
        def op(db: Database) -> int:
            return int(db.execute("SELECT COUNT(*) FROM offline WHERE user = ?", [user]).fetchone()[0])

        return await self._run(op)

    async def fetch(self, user: str) -> list[OfflineMessage]:
        def op(db: Database) -> list[OfflineMessage]:
            cur = db.execute("SELECT id, stanza, stamp FROM offline WHERE user = ? ORDER BY id", [user])
            return [OfflineMessage(id=int(i), stanza=str(s), stamp=float(t)) for i, s, t in cur]

        return await self._run(op)

    async def delete(self, user: str, ids: list[int]) -> None:
        params = [(user, int(i)) for i in ids]
        if not params:
            await trio.lowlevel.checkpoint()
            return

        def op(db: Database) -> None:
            with _transaction(db):
                db.conn.executemany(
                    "DELETE FROM offline_delivered WHERE id IN (SELECT id FROM offline WHERE user = ? AND id = ?)",
                    params,
                )
                db.conn.executemany("DELETE FROM offline WHERE user = ? AND id = ?", params)

        await self._run(op)

    async def take(self, user: str) -> list[OfflineMessage]:
        def op(db: Database) -> list[OfflineMessage]:
            if db.execute("SELECT 1 FROM offline WHERE user = ? LIMIT 1", [user]).fetchone() is None:
                return []  # the common login: no write lock taken
            # Select and delete in one write transaction: of two connections taking at once
            # (two nodes on one file), one gets the messages and the other nothing.
            with _transaction(db):
                rows = db.execute(
                    "SELECT id, stanza, stamp FROM offline WHERE user = ? ORDER BY id", [user]
                ).fetchall()
                if rows:
                    params = [(int(r[0]),) for r in rows]
                    db.conn.executemany("DELETE FROM offline_delivered WHERE id = ?", params)
                    db.conn.executemany("DELETE FROM offline WHERE id = ?", params)
                return [OfflineMessage(id=int(i), stanza=str(st), stamp=float(t)) for i, st, t in rows]

        return await self._run(op)

    async def restore(self, user: str, messages: list[OfflineMessage]) -> None:
        params = [(int(m.id), user, m.stanza, float(m.stamp)) for m in messages]
        if not params:
            await trio.lowlevel.checkpoint()
            return

        def op(db: Database) -> None:
            with _transaction(db):
                # Same ids (AUTOINCREMENT never hands them out again), so order is kept; an id
                # still present is left alone.
                db.conn.executemany(
                    "INSERT OR IGNORE INTO offline (id, user, stanza, stamp) VALUES (?, ?, ?, ?)", params
                )

        await self._run(op)

    async def lease(self, user: str, *, holder: str, until: float, now: float) -> list[OfflineMessage]:
        sql = (
            "SELECT id, stanza, stamp FROM offline WHERE user = ?"
            " AND (lease IS NULL OR lease_until < ?) ORDER BY id"
        )
        args = [user, float(now)]

        def op(db: Database) -> list[OfflineMessage]:
            if db.execute(sql + " LIMIT 1", args).fetchone() is None:
                return []  # the common login: no write lock taken
            # Select and mark in one write transaction: of two connections leasing at once (two
            # nodes on one file), one gets each message while its lease runs.
            with _transaction(db):
                rows = db.execute(sql, args).fetchall()
                db.conn.executemany(
                    "UPDATE offline SET lease = ?, lease_until = ? WHERE id = ?",
                    [(holder, float(until), int(r[0])) for r in rows],
                )
                return [OfflineMessage(id=int(i), stanza=str(st), stamp=float(t)) for i, st, t in rows]

        return await self._run(op)

    async def unlease(self, user: str, ids: list[int], holder: str) -> None:
        params = [(user, int(i), holder) for i in ids]
        if not params:
            await trio.lowlevel.checkpoint()
            return

        def op(db: Database) -> None:
            with _transaction(db):
                db.conn.executemany(
                    "UPDATE offline SET lease = NULL, lease_until = NULL WHERE user = ? AND id = ? AND lease = ?",
                    params,
                )

        await self._run(op)

    async def remember_resource(self, user: str, resource: str, *, seen: float, forget_before: float) -> None:
        def op(db: Database) -> None:
            with _transaction(db):
                db.execute(
                    "INSERT INTO offline_resources (user, resource, last_seen) VALUES (?, ?, ?)"
                    " ON CONFLICT (user, resource) DO UPDATE SET last_seen = MAX(last_seen, excluded.last_seen)",
                    [user, resource, float(seen)],
                )
                db.execute(
                    "DELETE FROM offline_resources WHERE user = ? AND last_seen < ?", [user, float(forget_before)]
                )

        await self._run(op)

    async def known_resources(self, user: str) -> list[KnownResource]:
        def op(db: Database) -> list[KnownResource]:
            cur = db.execute(
                "SELECT resource, last_seen FROM offline_resources WHERE user = ? ORDER BY resource", [user]
            )
            return [KnownResource(resource=str(r), last_seen=float(t)) for r, t in cur]

        return await self._run(op)

    async def pending(self, user: str, resource: str) -> list[OfflineMessage]:
        def op(db: Database) -> list[OfflineMessage]:
            cur = db.execute(
                "SELECT id, stanza, stamp FROM offline o WHERE user = ? AND NOT EXISTS"
                " (SELECT 1 FROM offline_delivered d WHERE d.id = o.id AND d.resource = ?) ORDER BY id",
                [user, resource],
            )
            return [OfflineMessage(id=int(i), stanza=str(s), stamp=float(t)) for i, s, t in cur]

        return await self._run(op)

    async def claim(self, user: str, resource: str, *, expire_before: float) -> list[OfflineMessage]:
        sql = (
            "SELECT id, stanza, stamp FROM offline o WHERE user = ? AND stamp >= ? AND NOT EXISTS"
            " (SELECT 1 FROM offline_delivered d WHERE d.id = o.id AND d.resource = ?) ORDER BY id"
        )
        args = [user, float(expire_before), resource]

        def op(db: Database) -> list[OfflineMessage]:
            if db.execute(sql + " LIMIT 1", args).fetchone() is None:
                return []  # nothing to claim: no write lock taken
            # Select and record in one write transaction: two sessions of one resource (on two
            # nodes sharing the file) claiming at once get disjoint sets.
            with _transaction(db):
                rows = db.execute(sql, args).fetchall()
                db.conn.executemany(
                    "INSERT OR IGNORE INTO offline_delivered (id, resource) VALUES (?, ?)",
                    [(int(r[0]), resource) for r in rows],
                )
                return [OfflineMessage(id=int(i), stanza=str(st), stamp=float(t)) for i, st, t in rows]

        return await self._run(op)

    async def release(self, user: str, resource: str, ids: list[int]) -> None:
        params = [(resource, user, int(i)) for i in ids]
        if not params:
            await trio.lowlevel.checkpoint()
            return

        def op(db: Database) -> None:
            with _transaction(db):
                db.conn.executemany(
                    "DELETE FROM offline_delivered WHERE resource = ?"
                    " AND id IN (SELECT id FROM offline WHERE user = ? AND id = ?)",
                    params,
                )

        await self._run(op)

    async def mark_delivered(
        self, user: str, resource: str, ids: list[int], *, known_since: float, expire_before: float
    ) -> list[int]:
        params = [(resource, user, int(i)) for i in ids]

        def op(db: Database) -> list[int]:
            if not params and db.execute("SELECT 1 FROM offline WHERE user = ? LIMIT 1", [user]).fetchone() is None:
                return []  # nothing to record or delete: no write transaction (the common login)
            # Records and deletions commit together: after a crash either both happened or neither
            # did (and the messages are delivered again: at least once, never lost).
            with _transaction(db):
                db.conn.executemany(
                    "INSERT OR IGNORE INTO offline_delivered (id, resource)"
                    " SELECT id, ? FROM offline WHERE user = ? AND id = ?",
                    params,
                )
                return _delete_messages(
                    db,
                    "user = :user AND (stamp < :expire OR ("
                    " EXISTS (SELECT 1 FROM offline_delivered d WHERE d.id = offline.id)"
                    " AND NOT EXISTS (SELECT 1 FROM offline_resources r"
                    "  WHERE r.user = :user AND r.last_seen >= :since AND NOT EXISTS"
                    "  (SELECT 1 FROM offline_delivered d WHERE d.id = offline.id AND d.resource = r.resource))))",
                    {"user": user, "expire": float(expire_before), "since": float(known_since)},
                )

        return await self._run(op)

    async def expire(self, user: str, *, before: float) -> int:
        def op(db: Database) -> int:
            with _transaction(db):
                return len(_delete_messages(db, "user = ? AND stamp < ?", [user, float(before)]))

        return await self._run(op)


class SqliteRooms:
    def __init__(self, storage: SqliteStorage) -> None:
        self._run = storage._run

    async def get(self, room: str) -> RoomRecord | None:
        def op(db: Database) -> RoomRecord | None:
            row = db.execute(f"SELECT {_ROOM_COLUMNS} FROM rooms WHERE jid = ?", [room]).fetchone()
            return None if row is None else _room_from_row(tuple(row))

        return await self._run(op)

    async def put(self, record: RoomRecord) -> None:
        row = _room_to_row(record)  # serialised here: a bad value fails in the caller, not the worker

        def op(db: Database) -> None:
            with _transaction(db):
                db.execute(f"INSERT OR REPLACE INTO rooms ({_ROOM_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", row)

        await self._run(op)

    async def delete(self, room: str) -> bool:
        def op(db: Database) -> bool:
            with _transaction(db):
                return db.execute("DELETE FROM rooms WHERE jid = ?", [room]).rowcount == 1

        return await self._run(op)

    async def set_occupants(self, room: str, occupants: list[dict[str, Any]], node: str | None) -> bool:
        blob = json.dumps(occupants, sort_keys=True)

        def op(db: Database) -> bool:
            with _transaction(db):
                cur = db.execute("UPDATE rooms SET occupants_json = ?, node = ? WHERE jid = ?", [blob, node, room])
                return cur.rowcount == 1

        return await self._run(op)

    async def list(self) -> list[str]:
        def op(db: Database) -> list[str]:
            return [str(r[0]) for r in db.execute("SELECT jid FROM rooms ORDER BY jid")]

        return await self._run(op)


class SqliteStorage(Storage):
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._limiter = trio.CapacityLimiter(1)
        # Read and written only inside the worker (under the limiter).
        self._db: Database | None = None
        # How many times an operation was retried because another connection held a lock past
        # BUSY_TIMEOUT (or SQLite reported busy at once); for tests and diagnostics.
        self.busy_retries = 0
        # The schema version after open() applied the migrations (storage/migrations.py).
        self.schema_version = 0
        # PRAGMA wal_autocheckpoint for the connection, set before open(): None keeps SQLite's
        # default (1000 pages); 0 leaves checkpoints to Litestream, as its docs ask of an
        # application it replicates (storage/litestream.py; BUSY_TIMEOUT already covers the
        # moments Litestream holds the lock to checkpoint).
        self.wal_autocheckpoint: int | None = None
        self.accounts = SqliteAccounts(self)
        self.rosters = SqliteRosters(self)
        self.offline = SqliteOffline(self)
        self.rooms = SqliteRooms(self)

    async def _run(self, fn: Callable[[Database], T]) -> T:
        """Run ``fn(db)`` in the worker thread; the only way anything touches the connection.

        ``fn`` is one transaction or a read (or a read, then one transaction): when it fails
        busy it is rolled back and run again (``_retry_busy``)."""

        def attempt() -> T:
            db = self._db
            if db is None:
                raise StorageClosedError(f"SqliteStorage({str(self.path)!r}) is not open")
            try:
                return fn(db)
            except sqlite3.OperationalError as exc:
                _rollback(db)
                if _is_busy(exc):
                    self.busy_retries += 1
                raise

        def call() -> T:
            return _retry_busy(attempt)

        result: T = await trio.to_thread.run_sync(call, limiter=self._limiter)
        return result

    def _connect(self) -> Database:
        conn = sqlite3.connect(str(self.path), timeout=BUSY_TIMEOUT, check_same_thread=False)
        try:
            db = Database(conn, execute_plugins=False)
            # Explicit, though timeout= already set it: the value every statement waits.
            db.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT * 1000)}")
            db.enable_wal()
            db.execute("PRAGMA synchronous = NORMAL")
            if self.wal_autocheckpoint is not None:
                db.execute(f"PRAGMA wal_autocheckpoint = {int(self.wal_autocheckpoint)}")
            db.execute("PRAGMA foreign_keys = ON")
            self.schema_version = migrate(db)
        except BaseException as exc:
            conn.close()
            if _is_busy(exc):
                self.busy_retries += 1
            raise
        return db

    def _open_sync(self) -> None:
        if self._db is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Several processes opening a fresh file at once race to switch it to WAL and to
        # migrate it; the loser may be told "locked" without waiting: open again.
        self._db = _retry_busy(self._connect)

    def _close_sync(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            db.conn.close()

    async def open(self) -> None:
        await trio.to_thread.run_sync(self._open_sync, limiter=self._limiter)

    async def close(self) -> None:
        # Shielded: a cancelled close must still release the connection. It waits at most
        # for the operation in flight, each bounded by BUSY_RETRY_FOR (plus one BUSY_TIMEOUT).
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(self._close_sync, limiter=self._limiter)
