"""``meshxmpp backup PATH``: a consistent copy of the SQLite database while nodes use it.

SQLite's online backup API (``sqlite3.Connection.backup``) copies every page in one step, i.e.
inside one read transaction of its own connection: in WAL mode that is a snapshot of the last
commit before it began, and the nodes keep reading and writing meanwhile (a reader never blocks
the writer). Copying in several steps would restart whenever a node commits in between, which
under steady load may never finish; one step cannot. The copy is written beside PATH, checked
(``PRAGMA quick_check``), switched to a rollback journal (one self-contained file) and renamed
into place, so PATH is either the old file or a whole new backup.

Blocking: call ``backup_sqlite`` from a worker thread (``backup`` does) or from the CLI. PostgreSQL
deployments use ``pg_dump`` instead (docs/operations.md, "Backup and restore").
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import trio

from meshxmpp.storage.sqlite import BUSY_TIMEOUT

__all__ = ["BackupError", "BackupResult", "backup", "backup_sqlite"]


class BackupError(Exception):
    """The backup could not be made (nothing was written at the destination)."""


@dataclass(frozen=True, slots=True)
class BackupResult:
    path: Path
    size: int
    accounts: int
    seconds: float


def _sidecars(path: Path) -> list[Path]:
    return [path.with_name(path.name + s) for s in ("-wal", "-shm", "-journal")]


def backup_sqlite(source: str | os.PathLike[str], dest: str | os.PathLike[str], *, replace: bool = False) -> BackupResult:
    import time

    began = time.monotonic()
    source, dest = Path(source), Path(dest)
    if not source.is_file():
        raise BackupError(f"no database at {source}")
    if dest.exists() and not replace:
        raise BackupError(f"{dest} exists (pass --force to replace it)")
    if dest.resolve() == source.resolve():
        raise BackupError("the backup must not be the database itself")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".partial")
    for leftover in [tmp, *_sidecars(tmp)]:
        leftover.unlink(missing_ok=True)
    src = sqlite3.connect(str(source), timeout=BUSY_TIMEOUT)
    try:
        src.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT * 1000)}")
        dst = sqlite3.connect(str(tmp))
        try:
            src.backup(dst, pages=-1)  # all pages in one step: one snapshot, never restarted
            dst.execute("PRAGMA journal_mode = DELETE")  # one self-contained file
            (check,) = dst.execute("PRAGMA quick_check").fetchone()
            if check != "ok":
                raise BackupError(f"the copy failed its check: {check}")
            try:
                (accounts,) = dst.execute("SELECT COUNT(*) FROM accounts").fetchone()
            except sqlite3.OperationalError:
                accounts = 0  # an empty database (no schema yet)
        finally:
            dst.close()
    except BaseException:
        for leftover in [tmp, *_sidecars(tmp)]:
            leftover.unlink(missing_ok=True)
        raise
    finally:
        src.close()
    os.replace(tmp, dest)
    return BackupResult(path=dest, size=dest.stat().st_size, accounts=int(accounts),
                        seconds=time.monotonic() - began)


async def backup(source: str | os.PathLike[str], dest: str | os.PathLike[str], *, replace: bool = False) -> BackupResult:
    """``backup_sqlite`` in a worker thread (the loop never blocks; ARCHITECTURE.md convention 13)."""
    result: BackupResult = await trio.to_thread.run_sync(lambda: backup_sqlite(source, dest, replace=replace))
    return result
