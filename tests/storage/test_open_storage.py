from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from meshxmpp.storage import MemoryStorage, SqliteStorage, open_storage


def _config(backend: str, path: str | Path | None, data_dir: Path) -> SimpleNamespace:
    return SimpleNamespace(data_dir=str(data_dir), storage=SimpleNamespace(backend=backend, path=path))


def test_memory(tmp_path: Path) -> None:
    assert isinstance(open_storage(_config("memory", None, tmp_path)), MemoryStorage)


async def test_sqlite_default_path_in_data_dir(tmp_path: Path) -> None:
    data_dir = tmp_path / "not" / "yet"
    storage = open_storage(_config("sqlite", None, data_dir))
    assert isinstance(storage, SqliteStorage)
    assert storage.path == data_dir / "meshxmpp.sqlite3"
    async with storage:
        assert await storage.accounts.list() == []
    assert (data_dir / "meshxmpp.sqlite3").is_file()


async def test_sqlite_explicit_path(tmp_path: Path) -> None:
    storage = open_storage(_config("sqlite", str(tmp_path / "x.db"), tmp_path / "unused"))
    assert isinstance(storage, SqliteStorage)
    assert storage.path == tmp_path / "x.db"
    async with storage:
        pass
    assert (tmp_path / "x.db").is_file()
    assert not (tmp_path / "unused").exists()


def test_unknown_backend(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="storage.backend"):
        open_storage(_config("oracle", None, tmp_path))
