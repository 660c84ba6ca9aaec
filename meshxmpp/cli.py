"""The ``meshxmpp`` command: argparse -> Config -> Node.run or a storage call. No logic of its own.

Exit codes: 0 done; 1 the operation failed (user exists, no such user, storage or network error);
2 the command line, the configuration or the input is wrong (nothing was changed).
"""

from __future__ import annotations

import argparse
import getpass
import re
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

from meshxmpp.config import LOG_LEVELS, Config, ConfigError, load_config

if TYPE_CHECKING:
    from meshxmpp.storage.base import Storage

__all__ = ["build_parser", "main"]

# Imports of trio, storage and the node happen inside the commands that need them, so that
# `--version`, `check-config` and configuration errors answer quickly.

PROG = "meshxmpp"
EXPLAIN_TYPES = ("chat", "normal", "headline", "groupchat", "error")
T = TypeVar("T")


class _Fail(Exception):
    """Stop with a one-line message on stderr and an exit code."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def _version() -> str:
    try:
        from meshxmpp import __version__

        return str(__version__)
    except ImportError:
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("meshxmpp")
        except PackageNotFoundError:
            return "unknown"


class _VersionAction(argparse.Action):
    # argparse's own "version" action needs the string up front; reading package metadata costs
    # more than the rest of `check-config`, so it is looked up only when asked for.
    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        kwargs.setdefault("nargs", 0)
        kwargs.setdefault("default", argparse.SUPPRESS)
        super().__init__(option_strings, dest, **kwargs)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        print(f"{PROG} {_version()}")
        parser.exit()


def _int_or_raw(text: str) -> int | str:
    # Leave a non-number as it is, so the config layer rejects it naming the key (c2s.port).
    return int(text) if re.fullmatch(r"[+-]?\d+", text.strip()) else text


def build_parser() -> argparse.ArgumentParser:
    # --config and --log-level work before or after the command; SUPPRESS keeps a later
    # sub-parser from overwriting a value given before the command.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config", metavar="FILE", default=argparse.SUPPRESS, help="TOML configuration file (default: none)"
    )
    common.add_argument(
        "--log-level",
        metavar="LEVEL",
        type=str.lower,
        choices=LOG_LEVELS,
        default=argparse.SUPPRESS,
        help="one of: " + ", ".join(LOG_LEVELS) + " (overrides log_level)",
    )
    node = argparse.ArgumentParser(add_help=False)
    node.add_argument("--domain", metavar="D", help="domain this node serves (overrides domain)")
    node.add_argument("--data-dir", metavar="DIR", help="data directory (overrides data_dir)")

    parser = argparse.ArgumentParser(
        prog=PROG,
        parents=[common],
        description="An XMPP server on Trio whose nodes form a peer-to-peer mesh.",
    )
    parser.add_argument("--version", action=_VersionAction, help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("serve", parents=[common, node], help="run a node in the foreground")
    p.add_argument("--c2s-port", metavar="N", type=_int_or_raw, help="client port (overrides c2s.port)")
    p.add_argument("--peers", metavar="HOST:PORT,...", type=_peer_list,
                   help="nodes to join, comma-separated (overrides mesh.peers; needs mesh.secret)")
    p.add_argument("--mesh-port", metavar="N", type=_int_or_raw, help="mesh port (overrides mesh.port)")
    p.add_argument("--mesh-bind", metavar="ADDR", help="mesh listener address (overrides mesh.bind)")
    p.add_argument("--node-name", metavar="NAME", help="this node's name in the cluster (overrides mesh.node_name)")
    p.add_argument("--mesh-profile", metavar="PROFILE",
                   help="membership timing preset: lan or test (overrides mesh.profile)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("adduser", parents=[common, node], help="create an account")
    p.add_argument("jid", metavar="USER@DOMAIN")
    p.add_argument("--password", metavar="PW", help="password (default: prompt, or one line from stdin)")
    p.add_argument("--exist-ok", action="store_true", help="succeed, changing nothing, if the account exists")
    p.set_defaults(func=cmd_adduser)

    p = sub.add_parser("passwd", parents=[common, node], help="change an account's password")
    p.add_argument("jid", metavar="USER@DOMAIN")
    p.add_argument("--password", metavar="PW", help="new password (default: prompt, or one line from stdin)")
    p.set_defaults(func=cmd_passwd)

    p = sub.add_parser(
        "deluser", parents=[common, node], help="delete an account, its roster and offline messages"
    )
    p.add_argument("jid", metavar="USER@DOMAIN")
    p.set_defaults(func=cmd_deluser)

    p = sub.add_parser("listusers", parents=[common, node], help="list accounts, one per line")
    p.set_defaults(func=cmd_listusers)

    p = sub.add_parser("check-config", parents=[common, node], help="validate the configuration and print OK")
    p.set_defaults(func=cmd_check_config)

    p = sub.add_parser(
        "migrate",
        parents=[common, node],
        help="create or upgrade the database schema and print its version",
        description="Apply pending schema migrations to the configured storage ([storage] in the config: "
        "the SQLite file or the PostgreSQL database) and print the schema version. `serve` does the same "
        "when it starts; run this first to upgrade a shared database once, before the nodes.",
    )
    p.set_defaults(func=cmd_migrate)

    p = sub.add_parser(
        "backup",
        parents=[common, node],
        help="write a consistent copy of the SQLite database, also while nodes run",
        description="Copy the SQLite database ([storage] path) to PATH with SQLite's online backup API: one "
        "snapshot of the last commit, taken while the nodes keep running. PostgreSQL: use pg_dump. "
        "See docs/operations.md, \"Backup and restore\".",
    )
    p.add_argument("path", metavar="PATH", help="the backup file to write")
    p.add_argument("--force", action="store_true", help="replace PATH if it exists")
    p.set_defaults(func=cmd_backup)

    p = sub.add_parser(
        "restore",
        parents=[common, node],
        help="rebuild the SQLite database from its Litestream replica",
        description="Rebuild the SQLite database ([storage] path) from [storage.litestream] replica with "
        "`litestream restore`, as of the latest sync or of --to-time. Run it with the node stopped. "
        "See docs/operations.md, \"Backup and restore\".",
    )
    p.add_argument("--to-time", metavar="T", dest="to_time",
                   help="point in time to restore to, e.g. 2024-05-01T12:00:00Z (default: the latest)")
    p.add_argument("--force", action="store_true", help="replace the database file if it exists")
    p.set_defaults(func=cmd_restore)

    p = sub.add_parser("import", parents=[common], help="import accounts and rosters from another server")
    source = p.add_subparsers(dest="import_source", metavar="SOURCE", required=True)
    p = source.add_parser(
        "prosody",
        parents=[common, node],
        help="a Prosody data directory (file storage)",
        description="Create the accounts of the Prosody host named by domain (--domain or the config) "
        "with their passwords (Prosody's SCRAM-SHA-1 keys, or plain passwords) and add their roster "
        "items, in this node's storage. Existing accounts and roster items are left unchanged, so "
        "running it again is safe. See docs/import.md.",
    )
    p.add_argument("prosody_data", metavar="DATA_DIR", help="Prosody's data_path, e.g. /var/lib/prosody")
    p.add_argument("--dry-run", action="store_true", help="print what would be done, change nothing")
    p.set_defaults(func=cmd_import_prosody)

    p = sub.add_parser(
        "explain",
        parents=[common],
        help="ask the running node who would receive a message, and why",
        description="Ask the running node (over its HTTP listener, [http] in the config) what the routing "
        "policy would do with a message to --to now: each session of the recipient, who gets the "
        "message or a carbon copy (or whether it is stored, bounced or dropped), and the rule that fired.",
    )
    p.add_argument("--to", metavar="JID", required=True, help="recipient: user@domain or user@domain/resource")
    p.add_argument("--type", metavar="TYPE", default="chat", choices=EXPLAIN_TYPES,
                   help="message type: " + ", ".join(EXPLAIN_TYPES) + " (default: chat)")
    p.add_argument("--from", metavar="JID", dest="sender", help="sender (per-sender policies match on it)")
    p.add_argument("--timeout", metavar="SECONDS", type=float, default=10.0,
                   help="how long to wait for the node (default: 10)")
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("cluster", parents=[common], help="ask the running node about its cluster (the mesh)")
    cluster = p.add_subparsers(dest="cluster_command", metavar="CLUSTER_COMMAND", required=True)
    p = cluster.add_parser(
        "status",
        parents=[common],
        help="members of the cluster, as the running node sees them",
        description="Ask the running node (over its HTTP listener, [http] in the config) for the cluster "
        "as it sees it: this node's name and epoch, and each member with its address, state, incarnation "
        "and number of sessions.",
    )
    p.add_argument("--timeout", metavar="SECONDS", type=float, default=10.0,
                   help="how long to wait for the node (default: 10)")
    p.add_argument("--json", action="store_true", help="print the node's answer as JSON")
    p.set_defaults(func=cmd_cluster_status)

    p = sub.add_parser(
        "config", parents=[common], help="cluster settings kept in the database (equal on every node)",
        description="Settings that must be equal on every node (routing policy, offline delivery, MUC "
        "defaults), kept in the database the nodes share; they override the file's values and running "
        "nodes apply a change within about a second. docs/mesh.md, \"Cluster settings\".",
    )
    settings = p.add_subparsers(dest="config_command", metavar="CONFIG_COMMAND", required=True)
    q = settings.add_parser("set", parents=[common], help="set KEY to VALUE for the whole cluster")
    q.add_argument("key", metavar="KEY", help="e.g. routing.policy")
    q.add_argument("value", metavar="VALUE", help="e.g. all-connected")
    q.set_defaults(func=cmd_config)
    q = settings.add_parser("get", parents=[common], help="print KEY's value and where it comes from")
    q.add_argument("key", metavar="KEY")
    q.set_defaults(func=cmd_config)
    q = settings.add_parser("unset", parents=[common], help="delete KEY's row: the file's value again")
    q.add_argument("key", metavar="KEY")
    q.set_defaults(func=cmd_config)
    q = settings.add_parser("list", parents=[common], help="every cluster setting, its value and source")
    q.set_defaults(func=cmd_config)
    return parser


def _peer_list(text: str) -> list[str]:
    # "a:1, b:2" -> ["a:1", "b:2"]; "" clears the file's peers. Checked by the config layer (mesh.peers[i]).
    return [p.strip() for p in text.split(",") if p.strip()]


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for attr, key in (
        ("log_level", "log_level"),
        ("domain", "domain"),
        ("data_dir", "data_dir"),
        ("c2s_port", "c2s.port"),
        ("peers", "mesh.peers"),
        ("mesh_port", "mesh.port"),
        ("mesh_bind", "mesh.bind"),
        ("node_name", "mesh.node_name"),
        ("mesh_profile", "mesh.profile"),
    ):
        value = getattr(args, attr, None)
        if value is not None:
            out[key] = value
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_usage(sys.stderr)
        print(f"{PROG}: error: a command is required (try --help)", file=sys.stderr)
        return 2
    try:
        config = load_config(getattr(args, "config", None), _overrides(args))
    except ConfigError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    from meshxmpp._logging import setup_logging

    setup_logging(config.log_level)
    func: Callable[[Config, argparse.Namespace], int] = args.func
    try:
        return func(config, args)
    except _Fail as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return exc.code
    except ConfigError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


# ------------------------------------------------------------------------------------------------
# serve


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for e in exc.exceptions for leaf in _leaves(e)]
    return [exc]


def cmd_serve(config: Config, args: argparse.Namespace) -> int:
    import trio

    from meshxmpp.node import Node

    try:
        trio.run(Node(config).run)
    except KeyboardInterrupt:
        return 0  # Ctrl-C before the node installed its own signal handling
    except BaseException as exc:  # noqa: B036 - sorted below, re-raised unless expected
        leaves = _leaves(exc)
        if all(isinstance(e, KeyboardInterrupt) for e in leaves):
            return 0
        if all(isinstance(e, ConfigError) for e in leaves):
            raise leaves[0] from None
        if all(isinstance(e, OSError) for e in leaves):
            # Address in use, permission denied on a port below 1024, unreadable certificate...
            raise _Fail("cannot start: " + "; ".join(str(e) for e in leaves)) from None
        raise
    return 0


# ------------------------------------------------------------------------------------------------
# accounts


def _user(config: Config, text: str) -> str:
    """The bare JID string storage uses, or a usage error."""
    from meshxmpp.jid import JID, InvalidJID

    try:
        jid = JID.parse(text)
    except InvalidJID as exc:
        raise _Fail(f"invalid address {text!r}: {exc}", 2) from None
    if jid.local is None or jid.resource is not None:
        raise _Fail(f"expected USER@DOMAIN, got {text!r}", 2)
    if jid.domain != config.domain:
        raise _Fail(
            f'this node serves "{config.domain}", not "{jid.domain}" '
            "(set domain in the config file or pass --domain)",
            2,
        )
    return str(jid.bare)


def _read_password(confirm: bool) -> str:
    stdin = sys.stdin
    if stdin is None or stdin.closed:
        raise _Fail("no password: pass --password or give it on standard input", 2)
    if stdin.isatty():
        try:
            password = getpass.getpass("Password: ")
            if confirm and getpass.getpass("Password (again): ") != password:
                raise _Fail("passwords do not match", 2)
        except EOFError:
            raise _Fail("no password given", 2) from None
    else:
        password = stdin.readline().rstrip("\r\n")
    if not password:
        raise _Fail("empty password: pass --password or give it on standard input", 2)
    return password


def _credentials(password: str) -> Any:
    from meshxmpp.c2s.sasl import derive_credentials

    try:
        return derive_credentials(password)
    except ValueError as exc:
        raise _Fail(f"password refused: {exc}", 2) from None


def _with_storage(config: Config, op: Callable[[Storage], Awaitable[T]]) -> T:
    """Open the configured storage, run ``op`` on it, close it."""
    import trio

    from meshxmpp.storage import open_storage

    async def run() -> T:
        storage = open_storage(config)
        await storage.open()
        try:
            return await op(storage)
        finally:
            with trio.CancelScope(shield=True):
                await storage.close()

    try:
        result: T = trio.run(run)
    except Exception as exc:
        if config.log_level == "debug":
            raise
        raise _Fail(
            f"storage error: {type(exc).__name__}: {exc} (--log-level debug shows the traceback)"
        ) from None
    return result


def _no_such_user(user: str) -> NoReturn:
    raise _Fail(f"no such user: {user}")


def cmd_adduser(config: Config, args: argparse.Namespace) -> int:
    user = _user(config, args.jid)

    async def exists(storage: Storage) -> bool:
        return await storage.accounts.exists(user)

    # Asked before prompting, so nobody types a password twice for nothing.
    if _with_storage(config, exists):
        return _already(user, args.exist_ok)
    password = args.password if args.password is not None else _read_password(confirm=True)
    creds = _credentials(password)

    async def create(storage: Storage) -> bool:
        return await storage.accounts.create(user, creds)

    if not _with_storage(config, create):
        return _already(user, args.exist_ok)
    print(f"user {user} created")
    return 0


def _already(user: str, exist_ok: bool) -> int:
    if not exist_ok:
        raise _Fail(f"user {user} already exists (use passwd to change the password, or --exist-ok)")
    print(f"user {user} already exists (left unchanged)")
    return 0


def cmd_passwd(config: Config, args: argparse.Namespace) -> int:
    user = _user(config, args.jid)

    async def exists(storage: Storage) -> bool:
        return await storage.accounts.exists(user)

    if not _with_storage(config, exists):
        _no_such_user(user)
    password = args.password if args.password is not None else _read_password(confirm=True)
    creds = _credentials(password)

    async def change(storage: Storage) -> bool:
        return await storage.accounts.set_credentials(user, creds)

    if not _with_storage(config, change):
        _no_such_user(user)
    print(f"password of {user} changed")
    return 0


def cmd_deluser(config: Config, args: argparse.Namespace) -> int:
    user = _user(config, args.jid)

    async def delete(storage: Storage) -> bool:
        return await storage.accounts.delete(user)

    if not _with_storage(config, delete):
        _no_such_user(user)
    print(f"user {user} deleted")
    return 0


def cmd_listusers(config: Config, args: argparse.Namespace) -> int:
    async def users(storage: Storage) -> list[str]:
        return await storage.accounts.list()

    for user in sorted(_with_storage(config, users)):
        print(user)
    return 0


def cmd_check_config(config: Config, args: argparse.Namespace) -> int:
    print("OK")
    return 0


def cmd_migrate(config: Config, args: argparse.Namespace) -> int:
    from meshxmpp.storage import LATEST

    if config.storage.backend == "memory":
        print("storage.backend is memory: there is no schema to migrate")
        return 0

    async def version(storage: Storage) -> int:
        # open() (in _with_storage) applied the pending migrations and recorded the version.
        return int(getattr(storage, "schema_version", 0))

    got = _with_storage(config, version)
    print(f"{config.storage.backend} schema version {got} (this meshxmpp: {LATEST})")
    return 0


# ------------------------------------------------------------------------------------------------
# backup and restore (docs/operations.md, "Backup and restore")


def cmd_backup(config: Config, args: argparse.Namespace) -> int:
    from meshxmpp.storage.backup import BackupError, backup_sqlite

    if config.storage.backend == "postgres":
        raise _Fail('storage.backend is postgres: back it up with pg_dump (docs/operations.md, "Backup and restore")')
    if config.storage.backend != "sqlite":
        raise _Fail(f"storage.backend is {config.storage.backend}: there is nothing on disk to back up", 2)
    try:
        done = backup_sqlite(config.storage_path, args.path, replace=args.force)
    except (BackupError, OSError) as exc:
        raise _Fail(f"backup failed: {exc}") from None
    except Exception as exc:  # sqlite3.Error and the like
        raise _Fail(f"backup failed: {type(exc).__name__}: {exc}") from None
    print(f"backup of {config.storage_path} written to {done.path}: {done.accounts} accounts, "
          f"{done.size} bytes, {done.seconds:.2f} s")
    return 0


def _rfc3339(text: str) -> str:
    from datetime import UTC, datetime

    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise _Fail(f"--to-time: expected a time such as 2024-05-01T12:00:00Z, got {text!r}", 2) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)  # documented: a time without a zone is UTC
    when = when.astimezone(UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S" + (".%fZ" if when.microsecond else "Z"))


def cmd_restore(config: Config, args: argparse.Namespace) -> int:
    from pathlib import Path

    from meshxmpp.storage import litestream

    replica = config.storage.litestream.replica
    if config.storage.backend != "sqlite" or replica is None:
        raise _Fail('restore needs backend = "sqlite" and [storage.litestream] replica (the URL to restore '
                    "from); with a `meshxmpp backup` file, copy it into place instead", 2)
    timestamp = _rfc3339(args.to_time) if args.to_time else None
    db = config.storage_path
    try:
        pid = int((Path(config.data_dir) / litestream.PID_NAME).read_text(encoding="ascii").strip())
    except (OSError, ValueError):
        pid = None
    if pid is not None and litestream._alive(pid) and litestream._is_litestream(pid):
        raise _Fail(f"a node seems to be running on {db} (its litestream has pid {pid}): stop it first")
    if db.exists() and not args.force:
        raise _Fail(f"{db} exists: stop the node and pass --force to replace it")
    try:
        binary = litestream.find_binary()
        litestream.restore(binary, replica, db, timestamp=timestamp, replace=args.force)
    except (litestream.LitestreamError, OSError) as exc:
        raise _Fail(f"restore failed: {exc}") from None
    print(f"restored {db} from {replica}" + (f" as of {timestamp}" if timestamp else ""))
    return 0


# ------------------------------------------------------------------------------------------------
# import


def cmd_import_prosody(config: Config, args: argparse.Namespace) -> int:
    from pathlib import Path

    from meshxmpp.importer.prosody import ProsodyDataError, apply, read_host
    from meshxmpp.storage import MemoryStorage, SqliteStorage, open_storage

    try:
        host = read_host(Path(args.prosody_data), config.domain)
    except (ProsodyDataError, OSError) as exc:
        raise _Fail(f"import: {exc}", 2) from None
    print(f"Prosody host {host.domain} ({host.path}): {len(host.accounts)} account(s), "
          f"{len(host.rosters)} roster(s)")
    empty = False
    if args.dry_run:
        # A dry run creates no database: a missing SQLite file reads as an empty one.
        target = open_storage(config)
        empty = isinstance(target, SqliteStorage) and not target.path.exists()

    async def run(storage: Storage) -> Any:
        return await apply(storage, host, dry_run=args.dry_run)

    if empty:
        import trio

        async def run_empty() -> Any:
            async with MemoryStorage() as storage:
                return await run(storage)

        report = trio.run(run_empty)
    else:
        report = _with_storage(config, run)
    for line in report.lines:
        print(line)
    for warning in host.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    would = "would be " if args.dry_run else ""
    print(f"accounts: {len(report.created)} {would}created, {len(report.existing)} already present, "
          f"{len(report.failed)} failed; roster items: {report.items_added} {would}added, "
          f"{report.items_present} already present")
    if host.other_stores:
        print("not imported: " + ", ".join(f"{store} ({n} file(s))" for store, n in host.other_stores.items())
              + " (docs/import.md)")
    if args.dry_run:
        print("dry run: nothing was changed")
    return 1 if report.failed else 0


# ------------------------------------------------------------------------------------------------
# explain


def _http_host(bind: str) -> str:
    # A wildcard bind answers on loopback too.
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(bind, bind)


@dataclass(frozen=True, slots=True)
class _Answer:
    status: int
    body: bytes
    report: Any  # the decoded JSON, None when the body is not JSON
    where: str  # "http://127.0.0.1:5280", for messages

    @property
    def error(self) -> str:
        message = self.report.get("error") if isinstance(self.report, dict) else None
        return str(message or f"unexpected answer: {self.body[:200]!r}")


def _ask_node(config: Config, target: str, *, timeout: float, command: str) -> _Answer:
    """``GET target`` on the running node's admin API ([http]: address, port and token of ``config``)."""
    import http.client
    import json

    if not config.http.enabled:
        raise _Fail(f"{command} asks the node over HTTP, but [http] enabled = false in the configuration")
    host, port = _http_host(config.http.bind), config.http.port
    if port == 0:
        raise _Fail(f"[http] port = 0 lets the node pick a free port; {command} needs the port it listens on", 2)
    headers = {"Accept": "application/json"}
    if config.http.admin_token is not None:
        headers["Authorization"] = f"Bearer {config.http.admin_token}"
    where = f"http://{host}:{port}" if ":" not in host else f"http://[{host}]:{port}"
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", target, headers=headers)
        response = conn.getresponse()
        body = response.read()
    except (OSError, http.client.HTTPException) as exc:
        if isinstance(exc, TimeoutError):
            reason = f"no answer within {timeout:g} s"
        else:
            reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        raise _Fail(f"no node answers at {where} ({reason}); is it running, with this [http] bind and port?") \
            from None
    finally:
        conn.close()
    try:
        report = json.loads(body)
    except ValueError:
        report = None
    return _Answer(response.status, body, report, where)


def cmd_explain(config: Config, args: argparse.Namespace) -> int:
    from urllib.parse import urlencode

    from meshxmpp.http.api import explain_text
    from meshxmpp.jid import JID, InvalidJID

    for flag, text in (("--to", args.to), ("--from", args.sender)):
        if text is not None:
            try:
                JID.parse(text)
            except InvalidJID as exc:
                raise _Fail(f"{flag}: invalid address {text!r}: {exc}", 2) from None
    params = {"to": args.to, "type": args.type}
    if args.sender is not None:
        params["from"] = args.sender
    answer = _ask_node(config, "/api/explain?" + urlencode(params), timeout=args.timeout, command="explain")
    if answer.status != 200 or not isinstance(answer.report, dict):
        raise _Fail(f"the node at {answer.where} answered {answer.status}: {answer.error}",
                    2 if answer.status == 400 else 1)
    print(explain_text(answer.report))
    return 0


# ------------------------------------------------------------------------------------------------
# cluster


def cmd_cluster_status(config: Config, args: argparse.Namespace) -> int:
    from meshxmpp.http.api import MESH_DISABLED, cluster_text

    answer = _ask_node(config, "/api/cluster", timeout=args.timeout, command="cluster status")
    if answer.status == 404 and answer.error == MESH_DISABLED:
        raise _Fail(f"the node at {answer.where} runs without a mesh (set [mesh] secret to form a cluster)")
    if answer.status != 200 or not isinstance(answer.report, dict):
        raise _Fail(f"the node at {answer.where} answered {answer.status}: {answer.error}")
    if args.json:
        text = answer.body.decode("utf-8", "replace")
        print(text, end="" if text.endswith("\n") else "\n")
    else:
        try:
            print(cluster_text(answer.report))
        except (KeyError, TypeError, ValueError) as exc:
            raise _Fail(f"the node at {answer.where} sent a status this command cannot read ({exc!r}); "
                        "try --json") from None
    return 0


# ------------------------------------------------------------------------------------------------
# cluster settings


def cmd_config(config: Config, args: argparse.Namespace) -> int:
    import json

    import trio

    from meshxmpp import cluster_settings as cs
    from meshxmpp.storage.cluster import ClusterStoreError, open_cluster_store

    what: str = args.config_command
    key: str | None = getattr(args, "key", None)
    if key is not None and key not in cs.KEYS:
        raise ConfigError(key, "is not a cluster setting; one of: " + ", ".join(cs.KEYS))
    if config.storage.backend == "memory":
        raise _Fail('config: [storage] backend = "memory" has no shared database to keep cluster settings in')

    def show(value: Any) -> str:
        return value if isinstance(value, str) else json.dumps(value)

    async def run() -> list[str]:
        store = open_cluster_store(config)
        await store.open()
        try:
            rows = await store.settings()
            current, applied, _ = cs.effective(config, rows)
            if what == "set":
                assert key is not None
                value = cs.parse_value(key, args.value)
                cs.validate(current, key, value)  # ConfigError names the key: exit 2, nothing written
                await store.set_setting(key, json.dumps(value))
                return [f"{key} = {show(value)} (running nodes apply it within about "
                        f"{cs.POLL_INTERVAL:g} s)"]
            if what == "unset":
                assert key is not None
                if not await store.delete_setting(key):
                    return [f"{key} was not set in the database"]
                return [f"{key} unset: {show(_get(config, key))} (the file's value) from now on"]
            keys = [key] if key is not None else list(cs.KEYS)
            return [f"{k} = {show(_get(current, k))} ({'database' if k in applied else 'file'})" for k in keys]
        finally:
            with trio.CancelScope(shield=True):
                await store.close()

    try:
        lines = trio.run(run)
    except ClusterStoreError as exc:
        raise _Fail(f"config: {exc}") from None
    for line in lines:
        print(line)
    return 0


def _get(config: Config, key: str) -> Any:
    section, _, name = key.partition(".")
    return getattr(getattr(config, section), name)
