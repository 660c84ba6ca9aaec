"""What only PostgreSQL has: the shared schema migrations, several nodes on one database, the
connection pool, and the test server itself (issue #7, docs/storage.md).

"Two nodes" below are two ``PostgresStorage`` objects on one database, each with its own pool
and worker threads, so their transactions really run at the same time on the server. No sleeps:
every wait is bounded by ``trio.fail_after``.
"""

from __future__ import annotations

import glob
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import SimpleNamespace

import psycopg
import pytest
import trio

from meshxmpp.c2s.sasl import derive_credentials
from meshxmpp.storage import (
    LATEST,
    PostgresStorage,
    PostgresUnavailable,
    RosterItem,
    SchemaError,
    StorageClosedError,
    open_storage,
)
from meshxmpp.storage.migrations import MIGRATIONS, SQLITE_MIGRATIONS, Migration, migrate_postgres
from meshxmpp.testing import _postgres
from meshxmpp.testing._postgres import INSTALL_HINT, PostgresMissing, PostgresServer

ALICE = "alice@example.org"
LIMIT = 1_000_000
DEADLINE = 60.0


@asynccontextmanager
async def nodes(dsn: str, n: int = 2, *, pool_size: int = 4) -> AsyncIterator[list[PostgresStorage]]:
    opened = [PostgresStorage(dsn, pool_size=pool_size) for _ in range(n)]
    try:
        async with trio.open_nursery() as nursery:  # open at once: racing to migrate one schema
            for s in opened:
                nursery.start_soon(s.open)
        yield opened
    finally:
        for s in opened:
            await s.close()


def _versions(dsn: str) -> list[int]:
    with psycopg.connect(dsn) as conn:
        return [r[0] for r in conn.execute("SELECT version FROM schema_version ORDER BY version")]


# --- the test server -----------------------------------------------------------------------


def test_server_runs_debian_postgresql(postgres_server: PostgresServer) -> None:
    with psycopg.connect(postgres_server.dsn()) as conn:
        version = conn.execute("SHOW server_version").fetchone()
    assert version is not None and int(version[0].split(".")[0]) >= 11
    assert postgres_server.startup_seconds < 20, "one server per session, started in seconds"


def test_missing_postgresql_fails_naming_the_install_step(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PG_BIN", raising=False)
    monkeypatch.setenv("PATH", "")
    monkeypatch.setattr(glob, "glob", lambda pattern: [])
    with pytest.raises(PostgresMissing) as info:
        _postgres.find_pg_bin()
    assert "apt-get install -y postgresql" in str(info.value) and str(info.value) == INSTALL_HINT


# --- migrations ----------------------------------------------------------------------------


@pytest.mark.parametrize("m", MIGRATIONS, ids=[str(m.version) for m in MIGRATIONS])
def test_every_migration_has_both_forms(m: Migration) -> None:
    assert callable(m.sqlite) and (callable(m.postgres) or m.postgres.strip())
    assert SQLITE_MIGRATIONS[m.version - 1] is m.sqlite


async def test_migrations_recorded_once_even_when_nodes_open_at_once(postgres_server: PostgresServer) -> None:
    dsn = postgres_server.fresh_dsn()
    async with nodes(dsn, 5) as opened:
        assert {s.schema_version for s in opened} == {LATEST}
    assert _versions(dsn) == list(range(1, LATEST + 1))
    # again: nothing changes
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert migrate_postgres(conn) == LATEST
    async with nodes(dsn, 1):
        pass
    assert _versions(dsn) == list(range(1, LATEST + 1))


async def test_upgrade_keeps_data_and_steps_apply_once(postgres_server: PostgresServer) -> None:
    dsn = postgres_server.fresh_dsn()
    steps = [m.postgres for m in MIGRATIONS]
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert migrate_postgres(conn, steps[:1]) == 1
        conn.execute("INSERT INTO offline (username, stanza, stamp) VALUES (%s, '<old/>', 1.0)", (ALICE,))
    async with nodes(dsn, 1) as (s,):
        (old,) = await s.offline.fetch(ALICE)
        assert await s.offline.pending(ALICE, "phone") == [old], "migration 2 on a version 1 database"
    calls: list[int] = []

    def extra(conn: psycopg.Connection[tuple[object, ...]]) -> None:
        calls.append(1)
        conn.execute("CREATE TABLE extra (x INTEGER)")

    with psycopg.connect(dsn, autocommit=True) as conn:
        assert migrate_postgres(conn, [*steps, extra]) == LATEST + 1
        assert migrate_postgres(conn, [*steps, extra]) == LATEST + 1
    assert calls == [1]


async def test_failed_migration_rolls_back(postgres_server: PostgresServer) -> None:
    dsn = postgres_server.fresh_dsn()
    with psycopg.connect(dsn, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.SyntaxError):
            migrate_postgres(conn, [*[m.postgres for m in MIGRATIONS], "CREATE TABLE half (x INT); BROKEN"])
        assert conn.execute("SELECT to_regclass('half')").fetchone() == (None,)
    assert _versions(dsn) == list(range(1, LATEST + 1))


async def test_newer_schema_is_refused(postgres_server: PostgresServer) -> None:
    dsn = postgres_server.fresh_dsn()
    async with nodes(dsn, 1):
        pass
    with psycopg.connect(dsn) as conn:
        conn.execute("INSERT INTO schema_version VALUES (%s, 0)", (LATEST + 1,))
    s = PostgresStorage(dsn)
    with pytest.raises(SchemaError):
        await s.open()
    with pytest.raises(StorageClosedError):
        await s.accounts.list()


# --- several nodes on one database ---------------------------------------------------------


async def test_two_nodes_write_one_users_roster_and_offline_queue(postgres_server: PostgresServer) -> None:
    per_task, tasks = 25, 4
    async with nodes(postgres_server.fresh_dsn()) as (a, b):

        async def write(s: PostgresStorage, name: str, t: int) -> None:
            for i in range(per_task):
                assert await s.offline.store(ALICE, f"<m n='{name}' t='{t}' i='{i}'/>", stamp=float(i), limit=LIMIT)
                await s.rosters.put(ALICE, RosterItem(f"{name}{t}-{i}@example.org", groups=(name,)))

        with trio.fail_after(DEADLINE):
            async with trio.open_nursery() as nursery:
                for t in range(tasks):
                    nursery.start_soon(write, a, "a", t)
                    nursery.start_soon(write, b, "b", t)
        got = await a.offline.fetch(ALICE)
        assert len(got) == 2 * tasks * per_task, "no offline message lost"
        assert len({m.id for m in got}) == len(got)
        for name in "ab":
            for t in range(tasks):
                mine = [m.stanza for m in got if f"n='{name}' t='{t}'" in m.stanza]
                assert mine == [f"<m n='{name}' t='{t}' i='{i}'/>" for i in range(per_task)], "each writer in order"
        assert len(await b.rosters.items(ALICE)) == 2 * tasks * per_task, "no roster item lost"
        assert await b.offline.fetch(ALICE) == got

        # the same roster item written by both at once: one whole version wins
        async with trio.open_nursery() as nursery:
            for s, name in ((a, "A"), (b, "B")):
                for i in range(10):
                    nursery.start_soon(s.rosters.put, ALICE, RosterItem("x@example.org", name=f"{name}{i}",
                                                                        groups=(f"{name}{i}",)))
        item = await a.rosters.get(ALICE, "x@example.org")
        assert item is not None and item.groups == (item.name,)


async def test_quota_holds_across_nodes(postgres_server: PostgresServer) -> None:
    async with nodes(postgres_server.fresh_dsn()) as (a, b):
        results: list[bool] = []

        async def store(s: PostgresStorage, i: int) -> None:
            results.append(await s.offline.store(ALICE, f"<q{i}/>", stamp=0.0, limit=7))

        with trio.fail_after(DEADLINE):
            async with trio.open_nursery() as nursery:
                for i in range(20):
                    nursery.start_soon(store, a if i % 2 else b, i)
        assert results.count(True) == 7
        assert await a.offline.count(ALICE) == 7


@pytest.mark.parametrize("rounds", [3])
async def test_racing_takes_deliver_each_message_once(postgres_server: PostgresServer, rounds: int) -> None:
    async with nodes(postgres_server.fresh_dsn()) as (a, b):
        for _ in range(rounds):
            for i in range(50):
                await a.offline.store(ALICE, f"<m{i}/>", stamp=float(i), limit=LIMIT)
            stored = await b.offline.fetch(ALICE)
            takes: list[list[int]] = []

            async def take(s: PostgresStorage, takes: list[list[int]] = takes) -> None:
                takes.append([m.id for m in await s.offline.take(ALICE)])

            with trio.fail_after(DEADLINE):
                async with trio.open_nursery() as nursery:
                    for i in range(8):
                        nursery.start_soon(take, a if i % 2 else b)
            every = [i for t in takes for i in t]
            assert sorted(every) == [m.id for m in stored], "each message taken exactly once"
            assert all(t == sorted(t) for t in takes), "oldest first"
            assert await a.offline.count(ALICE) == 0


async def test_racing_leases_are_disjoint(postgres_server: PostgresServer) -> None:
    """first-resource: two nodes leasing while a third stores: each message leased by one node
    (disjoint), and every stored message leased in the end."""
    async with nodes(postgres_server.fresh_dsn(), 3) as (a, b, c):
        got: dict[str, list[int]] = {}

        async def producer() -> None:
            for i in range(60):
                await c.offline.store(ALICE, f"<m{i}/>", stamp=float(i), limit=LIMIT)

        async def leaser(s: PostgresStorage, name: str) -> None:
            for k in range(20):
                holder = f"{name}/{k}"
                got[holder] = [m.id for m in await s.offline.lease(ALICE, holder=holder, until=1e12, now=1.0)]

        with trio.fail_after(DEADLINE):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(producer)
                nursery.start_soon(leaser, a, "a")
                nursery.start_soon(leaser, b, "b")
        every = [i for ids in got.values() for i in ids]
        every += [m.id for m in await a.offline.lease(ALICE, holder="last", until=1e12, now=1.0)]
        assert len(every) == len(set(every)), "no message leased twice"
        assert sorted(every) == [m.id for m in await b.offline.fetch(ALICE)], "and none missed"


async def test_racing_claims_deliver_each_message_once(postgres_server: PostgresServer) -> None:
    async with nodes(postgres_server.fresh_dsn()) as (a, b):
        for r in ("phone", "laptop"):
            await a.offline.remember_resource(ALICE, r, seen=1.0, forget_before=0.0)
        for i in range(60):
            await b.offline.store(ALICE, f"<m{i}/>", stamp=10.0, limit=LIMIT)
        ids = [m.id for m in await a.offline.fetch(ALICE)]
        got: dict[str, list[int]] = {"phone": [], "laptop": []}

        async def claim(s: PostgresStorage, resource: str) -> None:
            got[resource].extend(m.id for m in await s.offline.claim(ALICE, resource, expire_before=0.0))

        with trio.fail_after(DEADLINE):
            async with trio.open_nursery() as nursery:
                for i in range(6):
                    for r in ("phone", "laptop"):
                        nursery.start_soon(claim, a if i % 2 else b, r)
        assert sorted(got["phone"]) == ids, "each message claimed once for phone, across nodes"
        assert sorted(got["laptop"]) == ids, "and once for laptop"
        assert await b.offline.mark_delivered(ALICE, "phone", [], known_since=0.0, expire_before=0.0) == ids


async def test_take_racing_claim_and_store_loses_nothing(postgres_server: PostgresServer) -> None:
    """A node taking (first-resource) while another claims and a third stores: every message
    ends up taken exactly once or still stored, none twice, none lost."""
    async with nodes(postgres_server.fresh_dsn(), 3) as (a, b, c):
        taken: list[int] = []

        async def producer() -> None:
            for i in range(60):
                await c.offline.store(ALICE, f"<m{i}/>", stamp=10.0, limit=LIMIT)

        async def taker() -> None:
            for _ in range(20):
                taken.extend(m.id for m in await a.offline.take(ALICE))

        async def claimer() -> None:
            for _ in range(20):
                await b.offline.claim(ALICE, "phone", expire_before=0.0)

        with trio.fail_after(DEADLINE):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(producer)
                nursery.start_soon(taker)
                nursery.start_soon(claimer)
        left = [m.id for m in await a.offline.fetch(ALICE)]
        assert len(taken) == len(set(taken))
        assert sorted(taken + left) == sorted(set(taken + left)) and len(taken) + len(left) == 60


# --- the pool and its bounds ----------------------------------------------------------------


async def test_pool_runs_calls_in_parallel_and_bounds_them(postgres_server: PostgresServer) -> None:
    async with nodes(postgres_server.fresh_dsn(), 1, pool_size=3) as (s,):
        running = 0
        peak = 0

        def slow(conn: psycopg.Connection[tuple[object, ...]]) -> None:
            nonlocal running, peak
            running += 1
            peak = max(peak, running)
            conn.execute("SELECT pg_sleep(0.2)")
            running -= 1

        with trio.fail_after(DEADLINE):
            async with trio.open_nursery() as nursery:
                for _ in range(6):
                    nursery.start_soon(s._run, slow)
        assert peak == 3, "pool_size calls at once, no more"


async def test_statement_timeout_bounds_every_call(postgres_server: PostgresServer) -> None:
    s = PostgresStorage(postgres_server.fresh_dsn(), pool_size=1, timeout=0.3)
    async with s:
        with trio.fail_after(DEADLINE), pytest.raises(psycopg.errors.QueryCanceled):
            await s._run(lambda conn: conn.execute("SELECT pg_sleep(5)"))
        assert await s.accounts.list() == [], "the connection is usable afterwards"


async def test_unreachable_server_fails_within_the_connect_timeout(postgres_server: PostgresServer) -> None:
    port = _postgres._free_port()  # nothing listens there
    s = PostgresStorage(f"postgresql://nobody@127.0.0.1:{port}/x", connect_timeout=1.0)
    with trio.fail_after(DEADLINE), pytest.raises(PostgresUnavailable, match="cannot connect"):
        await s.open()
    with pytest.raises(StorageClosedError):
        await s.offline.count(ALICE)


async def test_data_survives_close_and_reopen(postgres_server: PostgresServer) -> None:
    dsn = postgres_server.fresh_dsn()
    creds = derive_credentials("pw")
    async with PostgresStorage(dsn) as s:
        await s.accounts.create(ALICE, creds)
        await s.offline.store(ALICE, "<m/>", stamp=1.5, limit=10)
        (m,) = await s.offline.fetch(ALICE)
        await s.offline.delete(ALICE, [m.id])
    async with PostgresStorage(dsn) as s:
        assert await s.accounts.get_credentials(ALICE) == creds
        await s.offline.store(ALICE, "<n/>", stamp=2.5, limit=10)
        (n,) = await s.offline.fetch(ALICE)
        assert n.id > m.id, "ids are never reused, across restarts either"


def test_dsn_is_not_in_repr() -> None:
    assert "secret" not in repr(PostgresStorage("postgresql://u:secret@h/db"))


async def test_open_storage_picks_postgres(postgres_server: PostgresServer) -> None:
    dsn = postgres_server.fresh_dsn()
    section = SimpleNamespace(backend="postgres", path=None, dsn=dsn, pool_size=2, timeout=5.0)
    storage = open_storage(SimpleNamespace(data_dir="unused", storage=section))
    assert isinstance(storage, PostgresStorage)
    assert (storage.dsn, storage.pool_size, storage.timeout) == (dsn, 2, 5.0)
    async with storage:
        assert await storage.accounts.list() == []
    with pytest.raises(ValueError, match="storage.dsn"):
        open_storage(SimpleNamespace(data_dir="unused", storage=SimpleNamespace(backend="postgres", path=None)))
