"""Persistent state behind the Protocols of ``storage.base``; ``open_storage`` picks a backend."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from meshxmpp.storage.base import (
    Accounts,
    Offline,
    OfflineMessage,
    RosterItem,
    Rosters,
    Storage,
    StorageClosedError,
)
from meshxmpp.storage.memory import MemoryStorage

__all__ = [
    "DEFAULT_FILENAME",
    "Accounts",
    "MemoryStorage",
    "Offline",
    "OfflineMessage",
    "RosterItem",
    "Rosters",
    "SqliteStorage",
    "Storage",
    "StorageClosedError",
    "open_storage",
]

DEFAULT_FILENAME = "meshxmpp.sqlite3"


def open_storage(config: Any) -> Storage:
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
        if path is None:
            path = Path(config.data_dir) / DEFAULT_FILENAME
        return SqliteStorage(path)
    raise ValueError(f"storage.backend: unknown storage backend {backend!r} (expected 'sqlite' or 'memory')")


def __getattr__(name: str) -> Any:
    # SqliteStorage is imported on first use, so that importing storage.base or the memory
    # fake does not pull in sqlite3/sqlite-utils.
    if name == "SqliteStorage":
        from meshxmpp.storage.sqlite import SqliteStorage as cls

        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


from typing import TYPE_CHECKING  # noqa: E402

if TYPE_CHECKING:
    from meshxmpp.storage.sqlite import SqliteStorage
