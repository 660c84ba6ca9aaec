"""A throwaway PostgreSQL server for tests: ``initdb`` + ``pg_ctl`` in a temporary directory.

Public names (import them from here; ``postgres_server`` is a pytest fixture, so a
``conftest.py`` that imports it offers it to its tests)::

    from meshxmpp.testing._postgres import PostgresServer, postgres_server

    with PostgresServer() as server:            # or the session-scoped pytest fixture
        dsn = server.fresh_dsn()                # an empty schema of its own, every call

It runs the binaries of Debian's ``postgresql`` package (``/usr/lib/postgresql/<v>/bin``, or
``pg_ctl`` on the PATH) on a free loopback port with ``trust`` authentication, data and socket
in a temporary directory, durability switched off (``fsync=off``: a test server is thrown
away), and removes everything in ``stop()``. PostgreSQL refuses to run as root: when the tests
run as root, ``initdb``/``pg_ctl`` run as the ``postgres`` user that Debian's package creates
(``runuser -u postgres --``), and the directory is handed to that user.

When PostgreSQL is not installed, ``PostgresServer()`` raises ``PostgresMissing`` naming the
install step: the PostgreSQL tests *fail* with that message (docs/storage.md), they are not
skipped, so CI cannot pass without them by accident.

Blocking: this is test set-up, run outside the event loop (a session fixture), except
``fresh_dsn()``, a few milliseconds of SQL.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, Self

__all__ = ["INSTALL_HINT", "PostgresMissing", "PostgresServer", "find_pg_bin", "postgres_server"]

INSTALL_HINT = (
    "PostgreSQL is not installed: install Debian's package with "
    "`apt-get update && apt-get install -y postgresql` (the README's test command does this), "
    "or put the directory holding initdb and pg_ctl on the PATH"
)
# The superuser initdb creates; with trust authentication on loopback it needs no password.
SUPERUSER = "meshxmpp"
DATABASE = "meshxmpp_test"
START_TIMEOUT = 30.0
_PREFIX = "meshxmpp-pg-"
_OWNER = "owner.pid"  # the test process that started the server


class PostgresMissing(RuntimeError):
    """initdb/pg_ctl were not found; the message says how to install them."""


def find_pg_bin() -> Path:
    """The directory holding ``initdb`` and ``pg_ctl``: ``$PG_BIN``, the PATH, or the newest
    ``/usr/lib/postgresql/<version>/bin`` (Debian does not put initdb on the PATH)."""
    env = os.environ.get("PG_BIN")
    candidates: list[Path] = [Path(env)] if env else []
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(Path(os.path.realpath(on_path)).parent)

    def version(p: str) -> tuple[int, ...]:
        name = Path(p).parent.name
        return tuple(int(x) for x in name.split(".") if x.isdigit())

    candidates += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True)]
    for d in candidates:
        if (d / "initdb").is_file() and (d / "pg_ctl").is_file():
            return d
    raise PostgresMissing(INSTALL_HINT)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class PostgresServer:
    """One PostgreSQL server in a temporary directory; ``start()``/``stop()`` or ``with``."""

    def __init__(self, *, bin_dir: Path | None = None) -> None:
        self.bin_dir = bin_dir if bin_dir is not None else find_pg_bin()
        self.port = 0
        self.startup_seconds = 0.0
        self._dir: Path | None = None
        self._as: list[str] = []
        self._schemas = itertools.count(1)

    # --- life cycle ----------------------------------------------------------------------

    def _run(self, *args: str) -> None:
        result = subprocess.run([*self._as, *args], capture_output=True, text=True, timeout=START_TIMEOUT)
        if result.returncode != 0:
            raise RuntimeError(
                f"{' '.join(args[:2])} failed ({result.returncode}): {result.stdout[-2000:]}{result.stderr[-2000:]}"
            )

    def start(self) -> None:
        began = time.monotonic()
        self._reap_orphans()
        root = Path(tempfile.mkdtemp(prefix=_PREFIX))
        self._dir = root
        (root / _OWNER).write_text(str(os.getpid()))
        if os.geteuid() == 0:
            # postgres will not run as root; Debian's package made this user.
            try:
                user = pwd.getpwnam("postgres")
            except KeyError:
                raise PostgresMissing(
                    "running as root and there is no 'postgres' user to run PostgreSQL as: " + INSTALL_HINT
                ) from None
            os.chown(root, user.pw_uid, user.pw_gid)
            self._as = self._as_user()
        data = root / "data"
        self._run(
            str(self.bin_dir / "initdb"), "-D", str(data), "-U", SUPERUSER, "--auth=trust",
            "--encoding=UTF8", "--no-locale", "--no-sync", "--no-instructions",
        )
        last: Exception | None = None
        for _ in range(5):  # the free port can be taken between probing and binding it
            self.port = _free_port()
            options = (
                f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={root}"
                " -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
            )
            try:
                self._run(str(self.bin_dir / "pg_ctl"), "-D", str(data), "-l", str(root / "log"),
                          "-o", options, "-w", "-t", str(int(START_TIMEOUT)), "start")
                break
            except RuntimeError as exc:
                last = exc
        else:
            raise RuntimeError(f"PostgreSQL did not start: {last}; log: {self.log_tail()}")
        self._admin(f'CREATE DATABASE "{DATABASE}"')
        self.startup_seconds = time.monotonic() - began

    def _reap_orphans(self) -> None:
        """Stop and delete servers left by test runs that were killed (no ``stop()``): those
        whose owner process is gone. Servers of running sessions are left alone."""
        for d in glob.glob(os.path.join(tempfile.gettempdir(), _PREFIX + "*")):
            try:
                owner = int((Path(d) / _OWNER).read_text())
            except (OSError, ValueError):
                continue  # not ours, or still starting
            try:
                os.kill(owner, 0)
                continue  # still running
            except ProcessLookupError:
                pass
            except PermissionError:
                continue
            if (Path(d) / "data" / "postmaster.pid").exists():
                subprocess.run([*self._as_user(), str(self.bin_dir / "pg_ctl"), "-D", str(Path(d) / "data"),
                                "-m", "immediate", "-w", "stop"], capture_output=True, timeout=START_TIMEOUT)
            shutil.rmtree(d, ignore_errors=True)

    @staticmethod
    def _as_user() -> list[str]:
        return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def stop(self) -> None:
        root, self._dir = self._dir, None
        if root is None:
            return
        try:
            if (root / "data" / "postmaster.pid").exists():
                self._run(str(self.bin_dir / "pg_ctl"), "-D", str(root / "data"), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(root, ignore_errors=True)

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def log_tail(self, n: int = 3000) -> str:
        if self._dir is None:
            return ""
        try:
            return (self._dir / "log").read_text(errors="replace")[-n:]
        except OSError:
            return ""

    # --- addresses -----------------------------------------------------------------------

    def dsn(self, database: str = DATABASE, **params: str) -> str:
        """A libpq URI for ``database``; ``params`` become query parameters."""
        if self._dir is None:
            raise RuntimeError("the PostgreSQL server is not running")
        query = "&".join(f"{k}={v}" for k, v in params.items())
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}" + (f"?{query}" if query else "")

    def fresh_dsn(self) -> str:
        """A DSN whose ``search_path`` is a new, empty schema: a fresh database for one storage
        (or several that share it) at the cost of ``CREATE SCHEMA``, not ``CREATE DATABASE``."""
        schema = f"t{os.getpid()}_{next(self._schemas)}"
        self._admin(f'CREATE SCHEMA "{schema}"', database=DATABASE)
        # libpq URI: options=-csearch_path=<schema>, percent-encoded.
        return self.dsn(options=f"-csearch_path%3D{schema}")

    def _admin(self, sql: str, database: str = "postgres") -> None:
        import psycopg

        with psycopg.connect(self.dsn(database), autocommit=True, connect_timeout=10) as conn:
            conn.execute(sql.encode())


def _fixture() -> Any:
    try:
        import pytest
    except ImportError:  # outside tests: the class is still usable
        return None

    @pytest.fixture(scope="session")
    def postgres_server() -> Iterator[PostgresServer]:
        """A PostgreSQL server for the whole test session (started on first use). Fails, naming
        the install step, when PostgreSQL is not installed."""
        try:
            server = PostgresServer()
        except PostgresMissing as exc:
            pytest.fail(str(exc), pytrace=False)
        with server:
            yield server

    return postgres_server


postgres_server = _fixture()
