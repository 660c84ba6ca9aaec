"""``meshxmpp backup PATH``: a consistent online copy of the SQLite database (storage/backup.py)."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from meshxmpp import testing
from meshxmpp.c2s.sasl import derive_credentials
from meshxmpp.storage.backup import BackupError, backup_sqlite
from meshxmpp.xml import ns
from meshxmpp.xml.element import Element


def accounts_in(path: Path) -> set[str]:
    conn = sqlite3.connect(str(path))
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        return {r[0] for r in conn.execute("SELECT user FROM accounts")}
    finally:
        conn.close()


async def test_backup_under_message_load_holds_every_account(tmp_path: Path) -> None:
    data = tmp_path / "data"
    creds = derive_credentials("secret")
    async with testing.node(data_dir=str(data), offline={"max_per_user": 100000}) as n:
        storage = n.node.ctx.storage
        created: list[str] = []
        for i in range(50):
            user = f"user{i}@localhost"
            await storage.accounts.create(user, creds)
            created.append(user)
        await n.add_user("sender")
        await n.add_user("away")
        created += ["sender@localhost", "away@localhost"]
        sender = await n.client("sender", resource="s")
        stop = trio.Event()
        stored = 0

        async def message_load() -> None:
            nonlocal stored
            k = 0
            while not stop.is_set():
                el = Element("message", ns.CLIENT, {"to": "away@localhost", "type": "chat", "id": f"x{k}"})
                el.add("body", ns.CLIENT, text="load " * 20)
                await sender.send(el)
                k += 1
                if k % 20 == 0:
                    await sender.ping()
                    stored = k

        async def account_load() -> None:
            k = 0
            while not stop.is_set():
                user = f"late{k}@localhost"
                await storage.accounts.create(user, creds)
                created.append(user)
                k += 1
                await trio.sleep(0.005)

        backups: list[tuple[set[str], Path]] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(message_load)
            nursery.start_soon(account_load)
            for round_ in range(3):
                with trio.fail_after(30):
                    while stored < 200 * (round_ + 1):  # noqa: ASYNC110 - bounded poll of a counter
                        await trio.sleep(0.01)
                before = set(created)  # committed before the backup began
                out = tmp_path / f"backup{round_}.sqlite3"
                done = await trio.run_process(
                    [sys.executable, "-m", "meshxmpp", "backup", "--data-dir", str(data), str(out)],
                    capture_stdout=True, capture_stderr=True, check=False)
                assert done.returncode == 0, done.stderr.decode()
                assert b"accounts" in done.stdout
                backups.append((before, out))
            stop.set()
        await sender.aclose()
        assert stored >= 600
        for before, out in backups:
            got = accounts_in(out)
            assert before <= got <= set(created)  # every account; nothing that never existed
            conn = sqlite3.connect(str(out))
            try:
                assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"  # one file
                assert conn.execute("SELECT COUNT(*) FROM offline").fetchone()[0] > 0
            finally:
                conn.close()


def test_backup_refuses_to_overwrite_and_to_copy_onto_itself(tmp_path: Path) -> None:
    db = tmp_path / "db.sqlite3"
    conn = sqlite3.connect(str(db))
    conn.execute("CREATE TABLE accounts (user TEXT PRIMARY KEY, creds TEXT)")
    conn.execute("INSERT INTO accounts VALUES ('a@x', '{}')")
    conn.commit()
    conn.close()
    out = tmp_path / "out.sqlite3"
    assert backup_sqlite(db, out).accounts == 1
    with pytest.raises(BackupError, match="exists"):
        backup_sqlite(db, out)
    assert backup_sqlite(db, out, replace=True).accounts == 1
    with pytest.raises(BackupError):
        backup_sqlite(db, db, replace=True)
    with pytest.raises(BackupError, match="no database"):
        backup_sqlite(tmp_path / "missing.sqlite3", tmp_path / "o2")
    assert not list(tmp_path.glob("*.partial*"))


def test_cli_backup_points_postgres_users_to_pg_dump(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[storage]\nbackend = "postgres"\ndsn = "postgresql://x@127.0.0.1:1/x"\n')
    done = subprocess.run([sys.executable, "-m", "meshxmpp", "backup", "--config", str(cfg), str(tmp_path / "b")],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 1
    assert "pg_dump" in done.stderr
