"""What the nodes of one cluster share through their database besides user data: the heartbeat rows of
database discovery (``[mesh] discovery = "database"``, `meshxmpp.mesh.discovery`) and the cluster
settings (`meshxmpp.cluster_settings`, ``meshxmpp config set``).

Two small tables, created on first use (``CREATE TABLE IF NOT EXISTS``), outside the storage
migrations (they hold nothing that survives a cluster restart in a way that matters: heartbeats
expire, and settings are plain key/value rows)::

    mesh_heartbeats(name PRIMARY KEY, host, port, epoch, protocol, seen)
    cluster_settings(key PRIMARY KEY, value (JSON text), updated)

Three backends, picked from ``[storage]`` like the node's storage:

- SQLite: its own ``sqlite3`` connection on the node's database file, used from one worker thread at a
  time (``trio.to_thread`` behind a ``CapacityLimiter(1)``, as `storage.sqlite`); writes take the lock
  at ``BEGIN IMMEDIATE`` and wait up to `BUSY_TIMEOUT` for it. ``seen`` is this host's clock (every
  node on one SQLite file is on this host).
- PostgreSQL (``[storage] backend = "postgres"``, ``dsn``): one psycopg 3 connection in autocommit,
  from a worker thread the same way; ``seen`` is the database server's clock, so the nodes' clocks
  need not agree. psycopg is imported only here, when needed.
- memory: dicts in this process: shared by the nodes given one `MemoryStorage` object, or (``backend =
  "memory"``) one ``[storage] path`` string, as nodes on one database file share it; else private.
"""

from __future__ import annotations

import sqlite3
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import trio

__all__ = [
    "BUSY_TIMEOUT",
    "ClusterStore",
    "ClusterStoreError",
    "Heartbeat",
    "MemoryClusterStore",
    "PostgresClusterStore",
    "SqliteClusterStore",
    "open_cluster_store",
]

T = TypeVar("T")
#: Seconds a write waits for another connection's lock (SQLite busy_timeout).
BUSY_TIMEOUT = 5.0

_SQL_TABLES = (
    "CREATE TABLE IF NOT EXISTS mesh_heartbeats (name TEXT PRIMARY KEY, host TEXT NOT NULL, "
    "port INTEGER NOT NULL, epoch BIGINT NOT NULL, protocol INTEGER NOT NULL, seen DOUBLE PRECISION NOT NULL)",
    "CREATE TABLE IF NOT EXISTS cluster_settings (key TEXT PRIMARY KEY, value TEXT NOT NULL, "
    "updated DOUBLE PRECISION NOT NULL)",
)


class ClusterStoreError(Exception):
    """The cluster tables cannot be used (driver missing, database unreachable)."""


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """One node's row: where it listens for the mesh, its directory epoch, the mesh protocol version
    it speaks (`meshxmpp.mesh.wire.PROTOCOL_VERSION`) and when it last wrote (seconds since 1970)."""

    name: str
    host: str
    port: int
    epoch: int
    protocol: int
    seen: float = 0.0


class ClusterStore(Protocol):
    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def heartbeat(self, row: Heartbeat) -> None:
        """Insert or refresh ``row`` (its ``seen`` is set by the store's clock)."""
    async def live(self, expiry: float) -> list[Heartbeat]:
        """Rows younger than ``expiry`` seconds, by name; older rows are deleted."""
    async def remove(self, name: str) -> None: ...
    async def settings(self) -> dict[str, str]:
        """Every cluster setting: key -> JSON text."""
    async def set_setting(self, key: str, value: str) -> None: ...
    async def delete_setting(self, key: str) -> bool: ...


# --------------------------------------------------------------------------- memory


@dataclass(slots=True)
class _Tables:
    heartbeats: dict[str, Heartbeat] = field(default_factory=dict)
    settings: dict[str, str] = field(default_factory=dict)


#: In-process tables by what the nodes share: a MemoryStorage (weakly) or a [storage] path string.
_BY_STORAGE: weakref.WeakKeyDictionary[Any, _Tables] = weakref.WeakKeyDictionary()
_BY_PATH: dict[str, _Tables] = {}


class MemoryClusterStore:
    """In-process tables: ``tables`` shared with other stores, else private ones."""

    def __init__(self, tables: _Tables | None = None, clock: Callable[[], float] = time.time) -> None:
        self._t = tables if tables is not None else _Tables()
        self._clock = clock

    async def open(self) -> None:
        await trio.lowlevel.checkpoint()

    async def close(self) -> None:
        await trio.lowlevel.checkpoint()

    async def heartbeat(self, row: Heartbeat) -> None:
        await trio.lowlevel.checkpoint()
        self._t.heartbeats[row.name] = Heartbeat(row.name, row.host, row.port, row.epoch, row.protocol,
                                                 self._clock())

    async def live(self, expiry: float) -> list[Heartbeat]:
        await trio.lowlevel.checkpoint()
        limit = self._clock() - expiry
        for name in [n for n, r in self._t.heartbeats.items() if r.seen < limit]:
            del self._t.heartbeats[name]
        return [self._t.heartbeats[n] for n in sorted(self._t.heartbeats)]

    async def remove(self, name: str) -> None:
        await trio.lowlevel.checkpoint()
        self._t.heartbeats.pop(name, None)

    async def settings(self) -> dict[str, str]:
        await trio.lowlevel.checkpoint()
        return dict(self._t.settings)

    async def set_setting(self, key: str, value: str) -> None:
        await trio.lowlevel.checkpoint()
        self._t.settings[key] = value

    async def delete_setting(self, key: str) -> bool:
        await trio.lowlevel.checkpoint()
        return self._t.settings.pop(key, None) is not None


# --------------------------------------------------------------------------- SQL backends


class _ThreadedSQL:
    """One DB-API connection used from one worker thread at a time."""

    def __init__(self) -> None:
        self._limiter = trio.CapacityLimiter(1)
        self._conn: Any = None

    async def _run(self, fn: Callable[[Any], T]) -> T:
        def call() -> T:
            if self._conn is None:
                raise ClusterStoreError("cluster store is not open")
            return fn(self._conn)

        result: T = await trio.to_thread.run_sync(call, limiter=self._limiter)
        return result

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(conn.close, limiter=self._limiter)


class SqliteClusterStore(_ThreadedSQL):
    def __init__(self, path: str | Path) -> None:
        super().__init__()
        self.path = Path(path)

    async def open(self) -> None:
        def connect() -> sqlite3.Connection:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(str(self.path), timeout=BUSY_TIMEOUT, isolation_level=None,
                                   check_same_thread=False)
            try:
                conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT * 1000)}")
                for sql in _SQL_TABLES:
                    conn.execute(sql)
            except BaseException:
                conn.close()
                raise
            return conn

        try:
            self._conn = await trio.to_thread.run_sync(connect, limiter=self._limiter)
        except sqlite3.Error as exc:
            raise ClusterStoreError(f"cannot open the cluster tables in {self.path}: {exc}") from exc

    @staticmethod
    def _write(conn: sqlite3.Connection, statements: list[tuple[str, tuple[Any, ...]]]) -> int:
        conn.execute("BEGIN IMMEDIATE")
        try:
            count = 0
            for sql, params in statements:
                count += conn.execute(sql, params).rowcount
            conn.execute("COMMIT")
            return count
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    async def heartbeat(self, row: Heartbeat) -> None:
        sql = ("INSERT INTO mesh_heartbeats (name, host, port, epoch, protocol, seen) VALUES (?, ?, ?, ?, ?, ?) "
               "ON CONFLICT (name) DO UPDATE SET host = excluded.host, port = excluded.port, "
               "epoch = excluded.epoch, protocol = excluded.protocol, seen = excluded.seen")
        params = (row.name, row.host, row.port, row.epoch, row.protocol, time.time())
        await self._run(lambda c: self._write(c, [(sql, params)]))

    async def live(self, expiry: float) -> list[Heartbeat]:
        def op(conn: sqlite3.Connection) -> list[Heartbeat]:
            limit = time.time() - expiry
            if conn.execute("SELECT 1 FROM mesh_heartbeats WHERE seen < ? LIMIT 1", (limit,)).fetchone():
                self._write(conn, [("DELETE FROM mesh_heartbeats WHERE seen < ?", (limit,))])
            rows = conn.execute("SELECT name, host, port, epoch, protocol, seen FROM mesh_heartbeats "
                                "WHERE seen >= ? ORDER BY name", (limit,)).fetchall()
            return [Heartbeat(*r) for r in rows]

        return await self._run(op)

    async def remove(self, name: str) -> None:
        await self._run(lambda c: self._write(c, [("DELETE FROM mesh_heartbeats WHERE name = ?", (name,))]))

    async def settings(self) -> dict[str, str]:
        return await self._run(lambda c: dict(c.execute("SELECT key, value FROM cluster_settings").fetchall()))

    async def set_setting(self, key: str, value: str) -> None:
        sql = ("INSERT INTO cluster_settings (key, value, updated) VALUES (?, ?, ?) "
               "ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated = excluded.updated")
        await self._run(lambda c: self._write(c, [(sql, (key, value, time.time()))]))

    async def delete_setting(self, key: str) -> bool:
        return bool(await self._run(
            lambda c: self._write(c, [("DELETE FROM cluster_settings WHERE key = ?", (key,))])))


class PostgresClusterStore(_ThreadedSQL):
    """psycopg 3, synchronous, in a worker thread (like the SQLite store: two small statements every
    few seconds need no pool and no async driver on Trio)."""

    _NOW = "extract(epoch from clock_timestamp())"

    def __init__(self, dsn: str) -> None:
        super().__init__()
        self.dsn = dsn

    async def open(self) -> None:
        try:
            import psycopg
        except ImportError as exc:
            raise ClusterStoreError(
                'PostgreSQL needs the psycopg package: pip install "meshxmpp[postgres]" (or psycopg[binary])'
            ) from exc

        def connect() -> Any:
            conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=10)
            try:
                for sql in _SQL_TABLES:
                    conn.execute(sql)
            except BaseException:
                conn.close()
                raise
            return conn

        try:
            self._conn = await trio.to_thread.run_sync(connect, limiter=self._limiter)
        except psycopg.Error as exc:
            raise ClusterStoreError(f"cannot open the cluster tables on PostgreSQL: {exc}") from exc

    async def heartbeat(self, row: Heartbeat) -> None:
        sql = ("INSERT INTO mesh_heartbeats (name, host, port, epoch, protocol, seen) "
               f"VALUES (%s, %s, %s, %s, %s, {self._NOW}) "
               "ON CONFLICT (name) DO UPDATE SET host = excluded.host, port = excluded.port, "
               "epoch = excluded.epoch, protocol = excluded.protocol, seen = excluded.seen")
        params = (row.name, row.host, row.port, row.epoch, row.protocol)
        await self._run(lambda c: c.execute(sql, params))

    async def live(self, expiry: float) -> list[Heartbeat]:
        def op(conn: Any) -> list[Heartbeat]:
            conn.execute(f"DELETE FROM mesh_heartbeats WHERE seen < {self._NOW} - %s", (expiry,))
            rows = conn.execute("SELECT name, host, port, epoch, protocol, seen FROM mesh_heartbeats "
                                f"WHERE seen >= {self._NOW} - %s ORDER BY name", (expiry,)).fetchall()
            return [Heartbeat(str(r[0]), str(r[1]), int(r[2]), int(r[3]), int(r[4]), float(r[5])) for r in rows]

        return await self._run(op)

    async def remove(self, name: str) -> None:
        await self._run(lambda c: c.execute("DELETE FROM mesh_heartbeats WHERE name = %s", (name,)))

    async def settings(self) -> dict[str, str]:
        return await self._run(
            lambda c: {str(k): str(v) for k, v in c.execute("SELECT key, value FROM cluster_settings").fetchall()})

    async def set_setting(self, key: str, value: str) -> None:
        sql = (f"INSERT INTO cluster_settings (key, value, updated) VALUES (%s, %s, {self._NOW}) "
               "ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated = excluded.updated")
        await self._run(lambda c: c.execute(sql, (key, value)))

    async def delete_setting(self, key: str) -> bool:
        cur = await self._run(lambda c: c.execute("DELETE FROM cluster_settings WHERE key = %s", (key,)))
        return bool(cur.rowcount)


# --------------------------------------------------------------------------- choosing one


def open_cluster_store(config: Any, storage: Any = None) -> ClusterStore:
    """The store for ``config`` (a `meshxmpp.config.Config`); the caller awaits ``open()``.

    ``storage``: the node's storage object when one was passed to `Node` (tests): a `MemoryStorage`
    means the in-process tables, a `SqliteStorage` its file, whatever ``[storage]`` says."""
    from meshxmpp.storage.memory import MemoryStorage
    from meshxmpp.storage.sqlite import SqliteStorage

    if isinstance(storage, MemoryStorage):
        try:
            return MemoryClusterStore(_BY_STORAGE.setdefault(storage, _Tables()))
        except TypeError:  # not weakly referable: tables of this node only
            return MemoryClusterStore()
    if isinstance(storage, SqliteStorage):
        return SqliteClusterStore(storage.path)
    backend = config.storage.backend
    if backend == "memory":
        path = config.storage.path
        return MemoryClusterStore(_BY_PATH.setdefault(str(path), _Tables()) if path else None)
    if backend == "postgres":
        dsn = getattr(config.storage, "dsn", None)
        if not dsn:
            raise ClusterStoreError('[storage] backend = "postgres" needs [storage] dsn')
        return PostgresClusterStore(str(dsn))
    return SqliteClusterStore(config.storage_path)
