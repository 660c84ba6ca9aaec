"""Persistent state behind the Protocols of ``storage.base``; ``open_storage`` picks a backend."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

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
from meshxmpp.storage.sqlite import SqliteStorage

__all__ = [
    "DEFAULT_FILENAME",
    "Accounts",
    "MemoryStorage",
    "Offline",
    "OfflineMessage",
    "RoomRecord",
    "Rooms",
    "RosterItem",
    "Rosters",
    "SqliteStorage",
    "Storage",
    "StorageClosedError",
    "open_storage",
]

DEFAULT_FILENAME = "meshxmpp.sqlite3"


class _StorageSection(Protocol):
    @property
    def backend(self) -> str: ...
    @property
    def path(self) -> str | os.PathLike[str] | None: ...


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
    so no file system call happens here). ``"memory"``: nothing survives a restart.
    """
    backend = config.storage.backend
    if backend == "memory":
        return MemoryStorage()
    if backend == "sqlite":
        path = config.storage.path
        return SqliteStorage(Path(config.data_dir) / DEFAULT_FILENAME if path is None else Path(path))
    raise ValueError(f"storage.backend: unknown storage backend {backend!r} (expected 'sqlite' or 'memory')")
