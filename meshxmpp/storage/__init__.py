"""Persistent state behind the Protocols of ``storage.base``; ``open_storage`` picks a backend."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol, TypeVar

from meshxmpp.storage.base import (
    Accounts,
    Offline,
    OfflineMessage,
    RoomRecord,
    Rooms,
    RosterItem,
    Rosters,
    Storage,
    StorageClosedError,
)
from meshxmpp.storage.memory import MemoryStorage
from meshxmpp.storage.migrations import LATEST, SchemaError
from meshxmpp.storage.postgres import DEFAULT_POOL_SIZE, DEFAULT_TIMEOUT, PostgresStorage, PostgresUnavailable
from meshxmpp.storage.sqlite import SqliteStorage

__all__ = [
    "DEFAULT_FILENAME",
    "LATEST",
    "Accounts",
    "MemoryStorage",
    "Offline",
    "OfflineMessage",
    "PostgresStorage",
    "PostgresUnavailable",
    "RoomRecord",
    "Rooms",
    "RosterItem",
    "Rosters",
    "SchemaError",
    "SqliteStorage",
    "Storage",
    "StorageClosedError",
    "open_storage",
]

DEFAULT_FILENAME = "meshxmpp.sqlite3"
T = TypeVar("T")


class _StorageSection(Protocol):
    @property
    def backend(self) -> str: ...
    @property
    def path(self) -> str | os.PathLike[str] | None: ...


def _setting(section: object, name: str, default: T) -> T:
    # Config sections from before the PostgreSQL keys (and test doubles) may lack them.
    value = getattr(section, name, None)
    return default if value is None else value


class _Config(Protocol):
    """The part of ``meshxmpp.config.Config`` read here."""

    @property
    def data_dir(self) -> str | os.PathLike[str]: ...
    @property
    def storage(self) -> _StorageSection: ...


def open_storage(config: _Config) -> Storage:
    """Build the backend named by ``config.storage.backend``; the caller awaits ``open()``.

    ``"sqlite"``: the file ``config.storage.path``, or ``<config.data_dir>/meshxmpp.sqlite3``
    when that is None; missing directories are created by ``open()`` (in the worker thread,
    so no file system call happens here). ``"postgres"``: the database ``config.storage.dsn``,
    with ``pool_size`` connections and every call bounded by ``timeout`` (nothing connects
    here either). ``"memory"``: nothing survives a restart.

    Opening a SQL backend applies pending schema migrations (``storage.migrations``).
    """
    backend = config.storage.backend
    if backend == "memory":
        return MemoryStorage()
    if backend == "sqlite":
        path = config.storage.path
        return SqliteStorage(Path(config.data_dir) / DEFAULT_FILENAME if path is None else Path(path))
    if backend == "postgres":
        section = config.storage
        dsn = _setting(section, "dsn", "")
        if not dsn:
            raise ValueError('storage.dsn: is required when storage.backend = "postgres"')
        return PostgresStorage(
            dsn,
            pool_size=_setting(section, "pool_size", DEFAULT_POOL_SIZE),
            timeout=_setting(section, "timeout", DEFAULT_TIMEOUT),
        )
    raise ValueError(
        f"storage.backend: unknown storage backend {backend!r} (expected 'sqlite', 'postgres' or 'memory')"
    )
