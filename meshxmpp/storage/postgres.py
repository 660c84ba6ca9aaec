"""PostgreSQL storage through psycopg 3, off the event loop (docs/storage.md).

Why threads: the event loop is Trio, and psycopg's async API (``AsyncConnection``,
``AsyncConnectionPool``) runs only on asyncio; its sync API releases the GIL while libpq waits
on the network. So every call here is psycopg's *sync* API inside ``trio.to_thread.run_sync``,
on a connection borrowed from a ``psycopg_pool.ConnectionPool``: the loop never blocks
(ARCHITECTURE.md convention 13), and up to ``pool_size`` calls of one node run at once, each on
its own connection. A ``trio.CapacityLimiter(pool_size)`` keeps the number of worker threads
equal to the number of connections, so callers beyond that wait in Trio (cancellably) rather
than in threads.

Every call is bounded (convention 7): borrowing a connection waits at most ``timeout``, every
statement is cancelled by the server after ``timeout`` (``statement_timeout``), connecting
gives up after ``connect_timeout``, and TCP keepalives with ``tcp_user_timeout`` end a call
whose server vanished. Cancellation is as in SQLite: a call cancelled while queued does
nothing; once its thread has started, it completes (commits or fails) first.

Durability: every write is one transaction committed inside the worker call ("acknowledged
means committed"). Connections are in autocommit mode; writes open ``conn.transaction()``.

Several nodes on one database (the point of this backend): all state is in the database, and
every read-modify-write on one user's offline queue (store with its quota, take, claim,
mark_delivered, delete, expire, restore, release, account deletion) first takes a transaction-
scoped advisory lock on that user, so they run one after another across every node. On top of
that, exactly-once offline delivery does not depend on the lock alone:

* ``take`` is one ``DELETE ... RETURNING`` (ordered by id): a row is deleted, and so returned,
  by one transaction only.
* ``claim`` is ``INSERT INTO offline_delivered ... ON CONFLICT DO NOTHING RETURNING``: a
  (message, resource) delivery record is inserted, and so returned, by one transaction only.

A transaction that fails with a serialization failure or a deadlock is rolled back and run
again (whole), with back-off, for up to ``timeout``.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import trio

from meshxmpp.storage.base import (
    KnownResource,
    OfflineMessage,
    RoomRecord,
    RosterItem,
    Storage,
    StorageClosedError,
)
from meshxmpp.storage.migrations import ADVISORY_NAMESPACE, migrate_postgres
from meshxmpp.storage.sqlite import _creds_from_json, _creds_to_json

if TYPE_CHECKING:
    from psycopg import Connection
    from psycopg_pool import ConnectionPool

    from meshxmpp.c2s.sasl import ScramCredentials

__all__ = ["DEFAULT_POOL_SIZE", "DEFAULT_TIMEOUT", "PostgresStorage", "PostgresUnavailable"]

T = TypeVar("T")

DEFAULT_POOL_SIZE = 10
DEFAULT_TIMEOUT = 30.0
DEFAULT_CONNECT_TIMEOUT = 10.0

INSTALL_HINT = 'the PostgreSQL backend needs psycopg: pip install "meshxmpp[postgres]"'


class PostgresUnavailable(RuntimeError):
    """psycopg is not installed, or the server could not be reached within the timeout."""


def _psycopg() -> Any:
    try:
        import psycopg
        import psycopg_pool
    except ImportError as exc:
        raise PostgresUnavailable(f"{INSTALL_HINT} ({exc})") from None
    return psycopg, psycopg_pool


def _lock_user(conn: Connection[Any], user: str) -> None:
    """Serialise read-modify-writes of ``user``'s offline queue across every node (until commit)."""
    conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (ADVISORY_NAMESPACE + 1, user))


def _messages(rows: list[tuple[Any, ...]]) -> list[OfflineMessage]:
    return [OfflineMessage(id=int(i), stanza=str(s), stamp=float(t)) for i, s, t in rows]


# --- row conversion -------------------------------------------------------------------------

_ROSTER_COLUMNS = "jid, name, subscription, ask, pending_in, pending_in_stanza, approved, groups_json, hidden"


def _item_to_row(user: str, item: RosterItem) -> tuple[Any, ...]:
    return (
        user,
        item.jid,
        item.name,
        item.subscription,
        bool(item.ask),
        bool(item.pending_in),
        item.pending_in_stanza,
        bool(item.approved),
        json.dumps(list(item.groups)),
        bool(item.hidden),
    )


def _item_from_row(row: tuple[Any, ...]) -> RosterItem:
    jid, name, subscription, ask, pending_in, pending_in_stanza, approved, groups, hidden = row
    return RosterItem(
        jid=jid,
        name=name,
        subscription=subscription,
        ask=bool(ask),
        pending_in=bool(pending_in),
        pending_in_stanza=pending_in_stanza,
        approved=bool(approved),
        groups=tuple(json.loads(groups)),
        hidden=bool(hidden),
    )


_ROOM_COLUMNS = "jid, config_json, affiliations_json, subject_json, subject_by, persistent, occupants_json, node"


def _room_to_row(record: RoomRecord) -> tuple[Any, ...]:
    return (
        record.jid,
        json.dumps(record.config, sort_keys=True),
        json.dumps(record.affiliations, sort_keys=True),
        None if record.subject is None else json.dumps(record.subject),
        record.subject_by,
        bool(record.persistent),
        json.dumps(record.occupants, sort_keys=True),
        record.node,
    )


def _upsert(table: str, columns: str, key: str) -> str:
    """``INSERT ... ON CONFLICT (key) DO UPDATE`` of every column of ``columns`` outside ``key``."""
    names = [c.strip() for c in columns.split(",")]
    keys = {k.strip() for k in key.split(",")}
    updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in names if c not in keys)
    return (f"INSERT INTO {table} ({', '.join(names)}) VALUES ({', '.join(['%s'] * len(names))})"
            f" ON CONFLICT ({key}) DO UPDATE SET {updates}")


def _room_from_row(row: tuple[Any, ...]) -> RoomRecord:
    jid, config, affiliations, subject, subject_by, persistent, occupants, node = row
    return RoomRecord(
        jid=str(jid),
        config=json.loads(config),
        affiliations=json.loads(affiliations),
        subject=None if subject is None else json.loads(subject),
        subject_by=subject_by,
        persistent=bool(persistent),
        occupants=json.loads(occupants),
        node=node,
    )


# Sorted results must sort as Python does (code points), whatever the database's collation.
_C = 'COLLATE "C"'


# --- the four parts ---------------------------------------------------------------------------


class PostgresAccounts:
    def __init__(self, storage: PostgresStorage) -> None:
        self._run = storage._run

    async def create(self, user: str, creds: dict[str, ScramCredentials]) -> bool:
        blob = _creds_to_json(creds)

        def op(conn: Connection[Any]) -> bool:
            cur = conn.execute(
                "INSERT INTO accounts (username, creds) VALUES (%s, %s) ON CONFLICT (username) DO NOTHING",
                (user, blob),
            )
            return cur.rowcount == 1

        return await self._run(op)

    async def get_credentials(self, user: str) -> dict[str, ScramCredentials] | None:
        def op(conn: Connection[Any]) -> str | None:
            row = conn.execute("SELECT creds FROM accounts WHERE username = %s", (user,)).fetchone()
            return None if row is None else str(row[0])

        text = await self._run(op)
        return None if text is None else _creds_from_json(text)

    async def set_credentials(self, user: str, creds: dict[str, ScramCredentials]) -> bool:
        blob = _creds_to_json(creds)

        def op(conn: Connection[Any]) -> bool:
            return conn.execute("UPDATE accounts SET creds = %s WHERE username = %s", (blob, user)).rowcount == 1

        return await self._run(op)

    async def delete(self, user: str) -> bool:
        def op(conn: Connection[Any]) -> bool:
            with conn.transaction():
                _lock_user(conn, user)
                if conn.execute("DELETE FROM accounts WHERE username = %s", (user,)).rowcount != 1:
                    return False
                conn.execute("DELETE FROM roster WHERE username = %s", (user,))
                conn.execute("DELETE FROM offline WHERE username = %s", (user,))  # records cascade
                conn.execute("DELETE FROM offline_resources WHERE username = %s", (user,))
                return True

        return await self._run(op)

    async def exists(self, user: str) -> bool:
        def op(conn: Connection[Any]) -> bool:
            return conn.execute("SELECT 1 FROM accounts WHERE username = %s", (user,)).fetchone() is not None

        return await self._run(op)

    async def list(self) -> list[str]:
        def op(conn: Connection[Any]) -> list[str]:
            return [str(r[0]) for r in conn.execute(f"SELECT username FROM accounts ORDER BY username {_C}")]

        return await self._run(op)


class PostgresRosters:
    def __init__(self, storage: PostgresStorage) -> None:
        self._run = storage._run

    async def items(self, user: str) -> list[RosterItem]:
        def op(conn: Connection[Any]) -> list[RosterItem]:
            rows = conn.execute(
                f"SELECT {_ROSTER_COLUMNS} FROM roster WHERE username = %s ORDER BY jid {_C}", (user,)
            ).fetchall()
            return [_item_from_row(r) for r in rows]

        return await self._run(op)

    async def get(self, user: str, jid: str) -> RosterItem | None:
        def op(conn: Connection[Any]) -> RosterItem | None:
            row = conn.execute(
                f"SELECT {_ROSTER_COLUMNS} FROM roster WHERE username = %s AND jid = %s", (user, jid)
            ).fetchone()
            return None if row is None else _item_from_row(row)

        return await self._run(op)

    async def put(self, user: str, item: RosterItem) -> None:
        row = _item_to_row(user, item)
        # One statement: concurrent puts of one item from several nodes never fail, the last one
        # wins whole.
        sql = _upsert("roster", f"username, {_ROSTER_COLUMNS}", "username, jid")
        await self._run(lambda conn: conn.execute(sql, row))

    async def remove(self, user: str, jid: str) -> bool:
        def op(conn: Connection[Any]) -> bool:
            return conn.execute("DELETE FROM roster WHERE username = %s AND jid = %s", (user, jid)).rowcount == 1

        return await self._run(op)


_CLAIMABLE = (
    "FROM offline o WHERE o.username = %(user)s AND o.stamp >= %(expire)s AND NOT EXISTS"
    " (SELECT 1 FROM offline_delivered d WHERE d.id = o.id AND d.resource = %(resource)s)"
)


class PostgresOffline:
    def __init__(self, storage: PostgresStorage) -> None:
        self._run = storage._run

    async def store(self, user: str, stanza: str, *, stamp: float, limit: int) -> bool:
        def op(conn: Connection[Any]) -> bool:
            # Count and insert under the user's lock: the quota holds across nodes.
            with conn.transaction():
                _lock_user(conn, user)
                row = conn.execute("SELECT COUNT(*) FROM offline WHERE username = %s", (user,)).fetchone()
                if row is None or int(row[0]) >= limit:
                    return False
                conn.execute(
                    "INSERT INTO offline (username, stanza, stamp) VALUES (%s, %s, %s)", (user, stanza, float(stamp))
                )
                return True

        return await self._run(op)

    async def count(self, user: str) -> int:
        def op(conn: Connection[Any]) -> int:
            row = conn.execute("SELECT COUNT(*) FROM offline WHERE username = %s", (user,)).fetchone()
            return 0 if row is None else int(row[0])

        return await self._run(op)

    async def fetch(self, user: str) -> list[OfflineMessage]:
        def op(conn: Connection[Any]) -> list[OfflineMessage]:
            return _messages(
                conn.execute(
                    "SELECT id, stanza, stamp FROM offline WHERE username = %s ORDER BY id", (user,)
                ).fetchall()
            )

        return await self._run(op)

    async def delete(self, user: str, ids: list[int]) -> None:
        wanted = [int(i) for i in ids]
        if not wanted:
            await trio.lowlevel.checkpoint()
            return

        def op(conn: Connection[Any]) -> None:
            with conn.transaction():
                _lock_user(conn, user)
                conn.execute("DELETE FROM offline WHERE username = %s AND id = ANY(%s)", (user, wanted))

        await self._run(op)

    async def take(self, user: str) -> list[OfflineMessage]:
        def op(conn: Connection[Any]) -> list[OfflineMessage]:
            if conn.execute("SELECT 1 FROM offline WHERE username = %s LIMIT 1", (user,)).fetchone() is None:
                return []  # the common login: no lock, no write
            with conn.transaction():
                _lock_user(conn, user)
                # One DELETE ... RETURNING: a row is returned by the one transaction that deleted
                # it, so of two nodes taking at once each message goes to exactly one.
                return _messages(
                    conn.execute(
                        "WITH taken AS (DELETE FROM offline WHERE username = %s RETURNING id, stanza, stamp)"
                        " SELECT id, stanza, stamp FROM taken ORDER BY id",
                        (user,),
                    ).fetchall()
                )

        return await self._run(op)

    async def restore(self, user: str, messages: list[OfflineMessage]) -> None:
        rows = [(int(m.id), user, m.stanza, float(m.stamp)) for m in messages]
        if not rows:
            await trio.lowlevel.checkpoint()
            return

        def op(conn: Connection[Any]) -> None:
            with conn.transaction():
                _lock_user(conn, user)
                with conn.cursor() as cur:
                    # Same ids (the identity never hands them out again), so order is kept; an
                    # id still present is left alone.
                    cur.executemany(
                        "INSERT INTO offline (id, username, stanza, stamp) VALUES (%s, %s, %s, %s)"
                        " ON CONFLICT (id) DO NOTHING",
                        rows,
                    )

        await self._run(op)

    async def lease(self, user: str, *, holder: str, until: float, now: float) -> list[OfflineMessage]:
        args = {"user": user, "holder": holder, "until": float(until), "now": float(now)}
        leasable = "FROM offline WHERE username = %(user)s AND (lease IS NULL OR lease_until < %(now)s)"

        def op(conn: Connection[Any]) -> list[OfflineMessage]:
            if conn.execute(f"SELECT 1 {leasable} LIMIT 1", args).fetchone() is None:
                return []  # the common login: no lock, no write
            with conn.transaction():
                _lock_user(conn, user)
                # Under the user's lock, one UPDATE ... RETURNING: of two nodes leasing at once,
                # the second sees the first's lease (committed before it got the lock).
                return _messages(
                    conn.execute(
                        "WITH leased AS (UPDATE offline SET lease = %(holder)s, lease_until = %(until)s"
                        f" WHERE id IN (SELECT id {leasable}) RETURNING id, stanza, stamp)"
                        " SELECT id, stanza, stamp FROM leased ORDER BY id",
                        args,
                    ).fetchall()
                )

        return await self._run(op)

    async def unlease(self, user: str, ids: list[int], holder: str) -> None:
        await self._locked_ids_write(
            user, ids, "UPDATE offline SET lease = NULL, lease_until = NULL"
            " WHERE username = %s AND id = ANY(%s) AND lease = %s", lambda wanted: (user, wanted, holder))

    async def _locked_ids_write(self, user: str, ids: list[int], sql: str,
                                params: Callable[[list[int]], tuple[Any, ...]]) -> None:
        """One statement about some of ``user``'s offline ids, under the user's lock (nothing to do
        for no ids)."""
        wanted = [int(i) for i in ids]
        if not wanted:
            await trio.lowlevel.checkpoint()
            return

        def op(conn: Connection[Any]) -> None:
            with conn.transaction():
                _lock_user(conn, user)
                conn.execute(sql, params(wanted))

        await self._run(op)

    async def remember_resource(self, user: str, resource: str, *, seen: float, forget_before: float) -> None:
        def op(conn: Connection[Any]) -> None:
            with conn.transaction():
                conn.execute(
                    "INSERT INTO offline_resources (username, resource, last_seen) VALUES (%s, %s, %s)"
                    " ON CONFLICT (username, resource) DO UPDATE"
                    " SET last_seen = GREATEST(offline_resources.last_seen, EXCLUDED.last_seen)",
                    (user, resource, float(seen)),
                )
                conn.execute(
                    "DELETE FROM offline_resources WHERE username = %s AND last_seen < %s",
                    (user, float(forget_before)),
                )

        await self._run(op)

    async def known_resources(self, user: str) -> list[KnownResource]:
        def op(conn: Connection[Any]) -> list[KnownResource]:
            rows = conn.execute(
                f"SELECT resource, last_seen FROM offline_resources WHERE username = %s ORDER BY resource {_C}",
                (user,),
            ).fetchall()
            return [KnownResource(resource=str(r), last_seen=float(t)) for r, t in rows]

        return await self._run(op)

    async def pending(self, user: str, resource: str) -> list[OfflineMessage]:
        def op(conn: Connection[Any]) -> list[OfflineMessage]:
            return _messages(
                conn.execute(
                    "SELECT id, stanza, stamp FROM offline o WHERE username = %s AND NOT EXISTS"
                    " (SELECT 1 FROM offline_delivered d WHERE d.id = o.id AND d.resource = %s) ORDER BY id",
                    (user, resource),
                ).fetchall()
            )

        return await self._run(op)

    async def claim(self, user: str, resource: str, *, expire_before: float) -> list[OfflineMessage]:
        args = {"user": user, "resource": resource, "expire": float(expire_before)}

        def op(conn: Connection[Any]) -> list[OfflineMessage]:
            if conn.execute(f"SELECT 1 {_CLAIMABLE} LIMIT 1", args).fetchone() is None:
                return []  # nothing to claim: no lock, no write
            with conn.transaction():
                _lock_user(conn, user)
                # The delivery record is the claim: ON CONFLICT DO NOTHING RETURNING returns a
                # (message, resource) pair to the one transaction that inserted it.
                return _messages(
                    conn.execute(
                        "WITH claimed AS (INSERT INTO offline_delivered (id, resource)"
                        f" SELECT o.id, %(resource)s {_CLAIMABLE}"
                        " ON CONFLICT (id, resource) DO NOTHING RETURNING id)"
                        " SELECT o.id, o.stanza, o.stamp FROM offline o JOIN claimed c ON c.id = o.id ORDER BY o.id",
                        args,
                    ).fetchall()
                )

        return await self._run(op)

    async def release(self, user: str, resource: str, ids: list[int]) -> None:
        await self._locked_ids_write(
            user, ids, "DELETE FROM offline_delivered d USING offline o"
            " WHERE d.id = o.id AND o.username = %s AND d.resource = %s AND d.id = ANY(%s)",
            lambda wanted: (user, resource, wanted))

    async def mark_delivered(
        self, user: str, resource: str, ids: list[int], *, known_since: float, expire_before: float
    ) -> list[int]:
        wanted = [int(i) for i in ids]

        def op(conn: Connection[Any]) -> list[int]:
            if not wanted and conn.execute(
                "SELECT 1 FROM offline WHERE username = %s LIMIT 1", (user,)
            ).fetchone() is None:
                return []  # nothing to record or delete (the common login)
            # Records and deletions commit together: after a crash either both happened or
            # neither did (and the messages are delivered again: at least once, never lost).
            with conn.transaction():
                _lock_user(conn, user)
                if wanted:
                    conn.execute(
                        "INSERT INTO offline_delivered (id, resource)"
                        " SELECT id, %s FROM offline WHERE username = %s AND id = ANY(%s)"
                        " ON CONFLICT (id, resource) DO NOTHING",
                        (resource, user, wanted),
                    )
                rows = conn.execute(
                    "DELETE FROM offline o WHERE o.username = %(user)s AND (o.stamp < %(expire)s OR ("
                    " EXISTS (SELECT 1 FROM offline_delivered d WHERE d.id = o.id)"
                    " AND NOT EXISTS (SELECT 1 FROM offline_resources r"
                    "  WHERE r.username = %(user)s AND r.last_seen >= %(since)s AND NOT EXISTS"
                    "  (SELECT 1 FROM offline_delivered d WHERE d.id = o.id AND d.resource = r.resource))))"
                    " RETURNING o.id",
                    {"user": user, "expire": float(expire_before), "since": float(known_since)},
                ).fetchall()
                return sorted(int(r[0]) for r in rows)

        return await self._run(op)

    async def expire(self, user: str, *, before: float) -> int:
        def op(conn: Connection[Any]) -> int:
            with conn.transaction():
                _lock_user(conn, user)
                cur = conn.execute("DELETE FROM offline WHERE username = %s AND stamp < %s", (user, float(before)))
                return cur.rowcount

        return await self._run(op)


class PostgresRooms:
    def __init__(self, storage: PostgresStorage) -> None:
        self._run = storage._run

    async def get(self, room: str) -> RoomRecord | None:
        def op(conn: Connection[Any]) -> RoomRecord | None:
            row = conn.execute(f"SELECT {_ROOM_COLUMNS} FROM rooms WHERE jid = %s", (room,)).fetchone()
            return None if row is None else _room_from_row(row)

        return await self._run(op)

    async def put(self, record: RoomRecord) -> None:
        row = _room_to_row(record)  # serialised here: a bad value fails in the caller, not the worker
        sql = _upsert("rooms", _ROOM_COLUMNS, "jid")
        await self._run(lambda conn: conn.execute(sql, row))

    async def delete(self, room: str) -> bool:
        def op(conn: Connection[Any]) -> bool:
            return conn.execute("DELETE FROM rooms WHERE jid = %s", (room,)).rowcount == 1

        return await self._run(op)

    async def set_occupants(self, room: str, occupants: list[dict[str, Any]], node: str | None) -> bool:
        blob = json.dumps(occupants, sort_keys=True)

        def op(conn: Connection[Any]) -> bool:
            cur = conn.execute("UPDATE rooms SET occupants_json = %s, node = %s WHERE jid = %s", (blob, node, room))
            return cur.rowcount == 1

        return await self._run(op)

    async def list(self) -> list[str]:
        def op(conn: Connection[Any]) -> list[str]:
            return [str(r[0]) for r in conn.execute(f"SELECT jid FROM rooms ORDER BY jid {_C}")]

        return await self._run(op)


class PostgresStorage(Storage):
    """Storage on a PostgreSQL database named by a libpq ``dsn`` (URI or ``key=value``).

    ``open()`` connects (the pool), and migrates the schema in the DSN's ``search_path``.
    Several ``PostgresStorage`` objects, in one process or on many machines, may share one
    database: that is what it is for.
    """

    def __init__(
        self,
        dsn: str,
        *,
        pool_size: int = DEFAULT_POOL_SIZE,
        timeout: float = DEFAULT_TIMEOUT,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    ) -> None:
        if pool_size < 1:
            raise ValueError(f"pool_size must be at least 1 (got {pool_size})")
        self.dsn = dsn
        self.pool_size = pool_size
        self.timeout = float(timeout)
        self.connect_timeout = float(connect_timeout)
        self.schema_version = 0
        # Transactions run again after a serialization failure or deadlock; for tests and diagnostics.
        self.retries = 0
        self._limiter = trio.CapacityLimiter(pool_size)
        self._pool: ConnectionPool[Any] | None = None
        self.accounts = PostgresAccounts(self)
        self.rosters = PostgresRosters(self)
        self.offline = PostgresOffline(self)
        self.rooms = PostgresRooms(self)

    def __repr__(self) -> str:
        return f"PostgresStorage(pool_size={self.pool_size})"  # the DSN may hold a password

    # --- the worker side ---------------------------------------------------------------------

    def _configure(self, conn: Connection[Any]) -> None:
        # Session settings, once per new connection (autocommit: they stay).
        ms = max(1, int(self.timeout * 1000))
        conn.execute("SELECT set_config('statement_timeout', %s, false)", (str(ms),))
        conn.execute("SELECT set_config('idle_in_transaction_session_timeout', %s, false)", (str(ms),))

    def _open_sync(self) -> int:
        if self._pool is not None:
            return self.schema_version
        psycopg, psycopg_pool = _psycopg()
        ms = max(1, int(self.timeout * 1000))
        # One direct connection first: an unreachable server or a refused login fails here at
        # once, with libpq's reason, instead of after the pool's background retries.
        try:
            psycopg.connect(self.dsn, connect_timeout=max(1, int(self.connect_timeout))).close()
        except psycopg.OperationalError as exc:
            reason = " ".join(str(exc).split())
            raise PostgresUnavailable(f"cannot connect to PostgreSQL: {reason}") from None
        pool: ConnectionPool[Any] = psycopg_pool.ConnectionPool(
            self.dsn,
            min_size=1,
            max_size=self.pool_size,
            open=False,
            timeout=self.timeout,
            configure=self._configure,
            check=psycopg_pool.ConnectionPool.check_connection,
            kwargs={
                "autocommit": True,
                "connect_timeout": max(1, int(self.connect_timeout)),
                # A server that vanished (no RST) ends the call instead of hanging it: TCP only.
                "keepalives": 1,
                "keepalives_idle": 10,
                "keepalives_interval": 5,
                "keepalives_count": 3,
                "tcp_user_timeout": ms,
            },
            name="meshxmpp",
        )
        try:
            pool.open(wait=True, timeout=self.connect_timeout)
            with pool.connection(timeout=self.timeout) as conn:
                self.schema_version = migrate_postgres(conn)
        except psycopg_pool.PoolTimeout as exc:
            pool.close(timeout=1.0)
            raise PostgresUnavailable(f"cannot connect to PostgreSQL: {exc}") from None
        except BaseException:
            pool.close(timeout=1.0)
            raise
        self._pool = pool
        return self.schema_version

    def _call(self, fn: Callable[[Connection[Any]], T]) -> T:
        psycopg, _ = _psycopg()
        retryable = (psycopg.errors.SerializationFailure, psycopg.errors.DeadlockDetected)
        deadline = time.monotonic() + self.timeout
        delay = 0.002
        while True:
            pool = self._pool
            if pool is None:
                raise StorageClosedError(f"{self!r} is not open")
            try:
                with pool.connection(timeout=self.timeout) as conn:
                    return fn(conn)
            except retryable:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise
                self.retries += 1
                time.sleep(min(left, random.uniform(delay / 2, delay)))
                delay = min(delay * 2, 0.1)

    async def _run(self, fn: Callable[[Connection[Any]], T]) -> T:
        """Run ``fn(conn)`` in a worker thread on a pooled connection: the only way anything
        touches the database. ``fn`` is one transaction or a read (or a read, then one
        transaction), so it can be run again whole."""
        if self._pool is None:
            raise StorageClosedError(f"{self!r} is not open")
        result: T = await trio.to_thread.run_sync(self._call, fn, limiter=self._limiter)
        return result

    def _close_sync(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close(timeout=self.timeout)

    # --- Storage ---------------------------------------------------------------------------

    async def open(self) -> None:
        await trio.to_thread.run_sync(self._open_sync, limiter=self._limiter)

    async def migrate(self) -> int:
        """Open (which migrates) and return the schema version; for ``meshxmpp migrate``."""
        await self.open()
        return self.schema_version

    async def close(self) -> None:
        # Shielded: a cancelled close must still release the connections; it waits for the
        # calls in flight, each bounded by ``timeout``.
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(self._close_sync)
