"""Every storage backend passes the same conformance suite (the memory fake is verified).

PostgreSQL runs against the session's real server (``postgres_server``, meshxmpp/testing/_postgres.py);
each storage the suite makes gets an empty schema of its own. Without PostgreSQL installed these
tests fail with the install step, they are not skipped.
"""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from meshxmpp.storage import MemoryStorage, PostgresStorage, SqliteStorage, Storage
from meshxmpp.testing._conformance import STORAGE_CHECKS, MakeStorage, check_storage
from meshxmpp.testing._postgres import PostgresServer

Check = Callable[[MakeStorage], Awaitable[None]]


def _factory(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> MakeStorage:
    if backend == "memory":
        return MemoryStorage
    if backend == "postgres":
        server: PostgresServer = request.getfixturevalue("postgres_server")
        return lambda: PostgresStorage(server.fresh_dsn(), pool_size=4)
    counter = itertools.count()

    def make() -> Storage:
        return SqliteStorage(tmp_path / f"db{next(counter)}" / "meshxmpp.sqlite3")

    return make


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def make_storage(request: pytest.FixtureRequest, tmp_path: Path) -> MakeStorage:
    return _factory(request.param, tmp_path, request)


@pytest.mark.parametrize("check", STORAGE_CHECKS, ids=[c.__name__ for c in STORAGE_CHECKS])
async def test_conformance(check: Check, make_storage: MakeStorage) -> None:
    await check(make_storage)


async def test_check_storage_runs_everything(make_storage: MakeStorage) -> None:
    await check_storage(make_storage)
