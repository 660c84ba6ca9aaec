"""Several SqliteStorage objects on one file (nodes sharing a host, issue #5, docs/storage.md).

Each storage has its own connection and worker thread, so the writes below really run in
parallel (trio.to_thread, one CapacityLimiter per storage), and in the process test from two
interpreters. Nothing may be lost, no "database is locked" may escape, and the offline claims
(``take``, ``claim``) hand each message to exactly one racer. No sleeps: every wait is bounded
by ``trio.fail_after``.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TypeVar

import pytest
import trio
from sqlite_utils import Database

from meshxmpp.storage import RosterItem, SqliteStorage
from meshxmpp.storage import sqlite as sqlite_mod
from meshxmpp.storage.sqlite import BUSY_TIMEOUT, _is_busy, _retry_busy

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[2]  # for the child processes' PYTHONPATH

ALICE = "alice@example.org"
LIMIT = 1_000_000
DEADLINE = 60.0


@asynccontextmanager
async def storages(path: Path, n: int = 2) -> AsyncIterator[list[SqliteStorage]]:
    opened = [SqliteStorage(path) for _ in range(n)]
    async with trio.open_nursery() as nursery:  # open concurrently: a fresh file, racing to WAL
        for s in opened:
            nursery.start_soon(s.open)
    try:
        yield opened
    finally:
        for s in opened:
            await s.close()


async def test_settings_for_several_writers(tmp_path: Path) -> None:
    async with storages(tmp_path / "db.sqlite3", 1) as (s,):
        got = await s._run(
            lambda db: tuple(
                db.execute(f"PRAGMA {p}").fetchone()[0] for p in ("journal_mode", "busy_timeout")
            )
        )
        assert got == ("wal", int(BUSY_TIMEOUT * 1000))
    assert BUSY_TIMEOUT >= 10.0


async def test_two_storages_write_concurrently_lose_nothing(tmp_path: Path) -> None:
    tasks, per_task = 8, 40
    with trio.fail_after(DEADLINE):
        async with storages(tmp_path / "db.sqlite3") as (a, b):

            async def write(s: SqliteStorage, tag: str, n: int) -> None:
                for i in range(per_task):
                    await s.rosters.put(ALICE, RosterItem(f"{tag}{n}-{i}@example.org", groups=(tag,)))
                    assert await s.offline.store(ALICE, f"<m {tag}{n}-{i}/>", stamp=float(i), limit=LIMIT)

            async with trio.open_nursery() as nursery:
                for n in range(tasks):
                    nursery.start_soon(write, a, "a", n)
                    nursery.start_soon(write, b, "b", n)

            want = {f"{tag}{n}-{i}" for tag in "ab" for n in range(tasks) for i in range(per_task)}
            for s in (a, b):  # both connections see every write
                assert {i.jid.split("@")[0] for i in await s.rosters.items(ALICE)} == want
                stored = await s.offline.fetch(ALICE)
                assert {m.stanza[3:-2] for m in stored} == want
                assert len({m.id for m in stored}) == len(want)


async def test_quota_holds_across_storages(tmp_path: Path) -> None:
    """Count-then-insert is one IMMEDIATE transaction: two connections cannot both pass the check."""
    with trio.fail_after(DEADLINE):
        async with storages(tmp_path / "db.sqlite3") as (a, b):
            results: list[bool] = []

            async def store(s: SqliteStorage, i: int) -> None:
                results.append(await s.offline.store(ALICE, f"<q{i}/>", stamp=0.0, limit=25))

            async with trio.open_nursery() as nursery:
                for i in range(60):
                    nursery.start_soon(store, a if i % 2 else b, i)
            assert results.count(True) == 25
            assert await a.offline.count(ALICE) == 25


async def test_two_storages_race_take(tmp_path: Path) -> None:
    with trio.fail_after(DEADLINE):
        async with storages(tmp_path / "db.sqlite3") as (a, b):
            for i in range(200):
                await a.offline.store(ALICE, f"<m{i}/>", stamp=float(i), limit=LIMIT)
            ids = [m.id for m in await b.offline.fetch(ALICE)]
            assert len(ids) == 200
            taken: dict[str, list[int]] = {"a": [], "b": []}

            async def take(s: SqliteStorage, name: str) -> None:
                taken[name].extend(m.id for m in await s.offline.take(ALICE))

            async with trio.open_nursery() as nursery:
                for _ in range(4):
                    nursery.start_soon(take, a, "a")
                    nursery.start_soon(take, b, "b")
            assert not set(taken["a"]) & set(taken["b"]), "no message taken by both"
            assert sorted(taken["a"] + taken["b"]) == ids, "the union is exactly the 200"
            assert await a.offline.count(ALICE) == 0


async def test_two_storages_race_lease(tmp_path: Path) -> None:
    """first-resource leases (docs/offline.md): two connections leasing at once get disjoint sets
    whose union is every message; after the lease expires they are offered again."""
    with trio.fail_after(DEADLINE):
        async with storages(tmp_path / "db.sqlite3") as (a, b):
            for i in range(200):
                await a.offline.store(ALICE, f"<m{i}/>", stamp=float(i), limit=LIMIT)
            ids = [m.id for m in await b.offline.fetch(ALICE)]
            leased: dict[str, list[int]] = {"a": [], "b": []}

            async def lease(s: SqliteStorage, name: str, k: int) -> None:
                got = await s.offline.lease(ALICE, holder=f"{name}/{k}", until=160.0, now=100.0)
                leased[name].extend(m.id for m in got)

            async with trio.open_nursery() as nursery:
                for k in range(4):
                    nursery.start_soon(lease, a, "a", k)
                    nursery.start_soon(lease, b, "b", k)
            assert not set(leased["a"]) & set(leased["b"]), "no message leased by both"
            assert sorted(leased["a"] + leased["b"]) == ids, "the union is exactly the 200"
            assert await a.offline.count(ALICE) == 200, "nothing deleted"
            again = await b.offline.lease(ALICE, holder="b/late", until=300.0, now=200.0)
            assert [m.id for m in again] == ids, "expired leases are offered again"


async def test_two_storages_race_take_while_storing(tmp_path: Path) -> None:
    """A writer stores 200 messages while both storages keep taking: each taken exactly once."""
    with trio.fail_after(DEADLINE):
        async with storages(tmp_path / "db.sqlite3", 3) as (a, b, writer):
            done = trio.Event()
            taken: list[tuple[str, int]] = []

            async def produce() -> None:
                for i in range(200):
                    assert await writer.offline.store(ALICE, f"<m{i}/>", stamp=float(i), limit=LIMIT)
                done.set()

            async def consume(s: SqliteStorage, name: str) -> None:
                while True:
                    finished = done.is_set()
                    got = await s.offline.take(ALICE)
                    taken.extend((name, int(m.stanza[2:-2])) for m in got)
                    if finished and not got:
                        return

            async with trio.open_nursery() as nursery:
                nursery.start_soon(produce)
                nursery.start_soon(consume, a, "a")
                nursery.start_soon(consume, b, "b")
            numbers = sorted(n for _, n in taken)
            assert numbers == list(range(200)), "every message taken, none twice"
            for name in "ab":  # each taker saw its share oldest first
                mine = [n for who, n in taken if who == name]
                assert mine == sorted(mine)


async def test_two_storages_race_claim_same_resource(tmp_path: Path) -> None:
    with trio.fail_after(DEADLINE):
        async with storages(tmp_path / "db.sqlite3") as (a, b):
            await a.offline.remember_resource(ALICE, "phone", seen=1.0, forget_before=0.0)
            for i in range(200):
                await a.offline.store(ALICE, f"<m{i}/>", stamp=10.0, limit=LIMIT)
            ids = [m.id for m in await a.offline.fetch(ALICE)]
            got: dict[str, list[int]] = {"a": [], "b": []}

            async def claim(s: SqliteStorage, name: str) -> None:
                got[name].extend(m.id for m in await s.offline.claim(ALICE, "phone", expire_before=0.0))

            async with trio.open_nursery() as nursery:
                for _ in range(4):
                    nursery.start_soon(claim, a, "a")
                    nursery.start_soon(claim, b, "b")
            assert not set(got["a"]) & set(got["b"])
            assert sorted(got["a"] + got["b"]) == ids
            assert await b.offline.pending(ALICE, "phone") == []
            # phone is the only known resource and had them all: one call deletes them
            assert (
                await b.offline.mark_delivered(ALICE, "phone", [], known_since=0.0, expire_before=0.0) == ids
            )


WRITER = textwrap.dedent(
    """
    import sys
    import trio
    from meshxmpp.storage import RosterItem, SqliteStorage

    path, tag, n = sys.argv[1], sys.argv[2], int(sys.argv[3])

    async def main() -> None:
        async with SqliteStorage(path) as s:
            print("ready", flush=True)
            await trio.to_thread.run_sync(sys.stdin.readline)  # the start line: both at once

            async def roster(k: int) -> None:
                for i in range(k, n, 2):
                    await s.rosters.put("alice@example.org", RosterItem(f"{tag}-{i}@example.org"))

            async def offline(k: int) -> None:
                for i in range(k, n, 2):
                    assert await s.offline.store("alice@example.org", f"<{tag}-{i}/>", stamp=1.0, limit=10**9)

            async def take() -> None:
                got = 0
                for _ in range(n // 10):
                    got += len(await s.offline.take("bob@example.org"))
                print(f"took {got}", flush=True)

            async with trio.open_nursery() as nursery:
                for k in range(2):
                    nursery.start_soon(roster, k)
                    nursery.start_soon(offline, k)
                nursery.start_soon(take)
            print(f"retries {s.busy_retries}", flush=True)

    trio.run(main)
    """
)


async def test_two_processes_write_at_once(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    n = 300
    # bob's queue is taken by both processes while they write alice's
    async with storages(path, 1) as (s,):
        for i in range(100):
            await s.offline.store("bob@example.org", f"<b{i}/>", stamp=1.0, limit=LIMIT)
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    root = ROOT
    procs = [
        await trio.lowlevel.open_process(
            [sys.executable, str(script), str(path), tag, str(n)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=root,
            env={**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])},
        )
        for tag in ("p1", "p2")
    ]
    outputs: list[str] = []
    try:
        with trio.fail_after(DEADLINE):
            for p in procs:
                assert p.stdout is not None
                assert (await p.stdout.receive_some(100)).startswith(b"ready")
            for p in procs:
                assert p.stdin is not None
                await p.stdin.send_all(b"go\n")

            async def collect(p: trio.Process) -> None:
                assert p.stdout is not None
                data = b""
                while chunk := await p.stdout.receive_some(4096):
                    data += chunk
                outputs.append(data.decode())
                assert await p.wait() == 0, data.decode()

            async with trio.open_nursery() as nursery:
                for p in procs:
                    nursery.start_soon(collect, p)
    finally:
        for p in procs:
            if p.returncode is None:
                p.kill()
                await p.wait()
    with sqlite3.connect(str(path)) as raw:
        jids = {r[0] for r in raw.execute("SELECT jid FROM roster WHERE user = ?", [ALICE])}
        stanzas = {r[0] for r in raw.execute("SELECT stanza FROM offline WHERE user = ?", [ALICE])}
        bob_left = raw.execute("SELECT COUNT(*) FROM offline WHERE user = 'bob@example.org'").fetchone()[0]
    assert jids == {f"{tag}-{i}@example.org" for tag in ("p1", "p2") for i in range(n)}
    assert stanzas == {f"<{tag}-{i}/>" for tag in ("p1", "p2") for i in range(n)}
    took = sum(
        int(line.split()[1]) for out in outputs for line in out.splitlines() if line.startswith("took")
    )
    assert took + bob_left == 100, f"bob's messages taken at most once: {outputs}"


def test_retry_busy_retries_then_gives_up() -> None:
    calls: list[int] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise sqlite3.OperationalError("database is locked")
        return "ok"

    assert _retry_busy(flaky) == "ok" and len(calls) == 3

    def other() -> None:
        raise sqlite3.OperationalError("no such table: x")

    with pytest.raises(sqlite3.OperationalError, match="no such table"):
        _retry_busy(other)

    def always() -> None:
        raise sqlite3.OperationalError("database is locked")

    with pytest.raises(sqlite3.OperationalError, match="locked"):
        _retry_busy(always, retry_for=0.05)


def test_is_busy_uses_error_codes(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    holder = sqlite3.connect(str(path), isolation_level=None)
    holder.execute("PRAGMA journal_mode = wal")
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN IMMEDIATE")
    other = sqlite3.connect(str(path), timeout=0, isolation_level=None)
    try:
        with pytest.raises(sqlite3.OperationalError) as info:
            other.execute("BEGIN IMMEDIATE")
        assert _is_busy(info.value)
        with pytest.raises(sqlite3.OperationalError) as info:
            other.execute("SELECT * FROM missing")
        assert not _is_busy(info.value)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        other.close()


async def test_busy_past_the_timeout_is_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A write that finds the lock held past the busy timeout is rolled back and run again once
    the other writer is done; nothing escapes to the caller."""
    path = tmp_path / "db.sqlite3"
    monkeypatch.setattr(sqlite_mod, "BUSY_TIMEOUT", 0.0)  # fail at once, so the retry path runs
    async with storages(path, 1) as (s,):
        # check_same_thread=False: the worker thread releases it, from inside the retry
        holder = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        holder.execute("BEGIN IMMEDIATE")
        original = s._run

        async def run(fn: Callable[[Database], T]) -> T:
            def wrapped(db: Database) -> T:
                if s.busy_retries and holder.in_transaction:  # the first attempt failed busy
                    holder.execute("COMMIT")
                return fn(db)

            return await original(wrapped)

        s.offline._run = run  # type: ignore[method-assign]
        with trio.fail_after(DEADLINE):
            assert await s.offline.store(ALICE, "<m/>", stamp=1.0, limit=10)
        assert not holder.in_transaction and s.busy_retries >= 1
        assert [m.stanza for m in await s.offline.fetch(ALICE)] == ["<m/>"]
        holder.close()


async def test_every_write_transaction_is_immediate(tmp_path: Path) -> None:
    """A deferred BEGIN that reads, then writes, must upgrade its lock and fails with "database is
    locked" at once when another connection wrote meanwhile, whatever the busy timeout (measured:
    14 of 1,600 concurrent stores from two storages). So every transaction here is IMMEDIATE."""
    async with storages(tmp_path / "db.sqlite3", 1) as (s,):
        statements: list[str] = []
        await s._run(lambda db: db.conn.set_trace_callback(statements.append))
        await s.accounts.create(ALICE, {})
        await s.rosters.put(ALICE, RosterItem("bob@example.org"))
        await s.offline.store(ALICE, "<m/>", stamp=1.0, limit=10)
        await s.offline.remember_resource(ALICE, "phone", seen=1.0, forget_before=0.0)
        await s.offline.claim(ALICE, "phone", expire_before=0.0)
        await s.offline.release(ALICE, "phone", [m.id for m in await s.offline.fetch(ALICE)])
        await s.offline.mark_delivered(ALICE, "phone", [], known_since=0.0, expire_before=0.0)
        taken = await s.offline.take(ALICE)
        await s.offline.restore(ALICE, taken)
        await s.offline.expire(ALICE, before=2.0)
        await s.rosters.remove(ALICE, "bob@example.org")
        await s.accounts.delete(ALICE)
        await s._run(lambda db: db.conn.set_trace_callback(None))
        begins = [q.strip().upper() for q in statements if q.strip().upper().startswith("BEGIN")]
        assert len(begins) >= 12
        assert all(b == "BEGIN IMMEDIATE" for b in begins), begins
