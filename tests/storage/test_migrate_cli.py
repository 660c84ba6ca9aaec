"""`meshxmpp migrate`: applies the schema migrations of the configured backend and prints the version."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from meshxmpp.cli import main
from meshxmpp.storage import LATEST
from meshxmpp.testing._postgres import PostgresServer


def _config(tmp_path: Path, text: str) -> str:
    path = tmp_path / "meshxmpp.toml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_migrate_sqlite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "data" / "chat.sqlite3"
    config = _config(tmp_path, f'[storage]\npath = "{db}"\n')
    for _ in range(2):  # idempotent
        assert main(["migrate", "--config", config]) == 0
        assert capsys.readouterr().out == f"sqlite schema version {LATEST} (this meshxmpp: {LATEST})\n"
    assert db.is_file()


def test_migrate_postgres(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                          postgres_server: PostgresServer) -> None:
    dsn = postgres_server.fresh_dsn()
    config = _config(tmp_path, f'[storage]\nbackend = "postgres"\ndsn = "{dsn}"\n')
    assert main(["migrate", "--config", config]) == 0
    assert capsys.readouterr().out == f"postgres schema version {LATEST} (this meshxmpp: {LATEST})\n"
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT version FROM schema_version ORDER BY version").fetchall()
    assert [r[0] for r in rows] == list(range(1, LATEST + 1))


def test_migrate_unreachable_postgres_is_one_line_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(tmp_path, '[storage]\nbackend = "postgres"\ndsn = "postgresql://x@127.0.0.1:1/x"\n')
    assert main(["migrate", "--config", config]) == 1
    err = capsys.readouterr().err
    assert "cannot connect to PostgreSQL" in err and err.count("\n") == 1


def test_migrate_memory_says_so(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    config = _config(tmp_path, '[storage]\nbackend = "memory"\n')
    assert main(["migrate", "--config", config]) == 0
    assert "no schema" in capsys.readouterr().out
