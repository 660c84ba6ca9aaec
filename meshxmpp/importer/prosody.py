"""Import accounts and rosters from a Prosody data directory (``internal_plain`` storage files).

Prosody's file storage (``storage = "internal"``, the default) keeps one Lua data file per user and
store: ``<data>/<host>/accounts/<user>.dat`` and ``<data>/<host>/roster/<user>.dat``, where host
and user are encoded by ``util.datamanager``: every byte that is not an ASCII letter or digit
becomes ``%xx`` (lower-case hex), so ``example.org`` is ``example%2eorg``. The files are read with
`meshxmpp.importer.lua` (a parser, never Lua itself).

Reading (`read_host`, synchronous, no storage) and writing (`apply`, on an open
`meshxmpp.storage.base.Storage`) are separate, so ``--dry-run`` runs the same code without
writes. See ``docs/import.md`` for what is and is not imported.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from meshxmpp.c2s.sasl import ScramCredentials, derive_credentials
from meshxmpp.importer.lua import FALSE, LuaDataError, LuaValue, parse_file
from meshxmpp.jid import JID, InvalidJID
from meshxmpp.storage.base import RosterItem
from meshxmpp.xml import ns
from meshxmpp.xml.element import Element
from meshxmpp.xml.errors import StreamError
from meshxmpp.xml.serialize import to_str
from meshxmpp.xml.stream import parse_element

if TYPE_CHECKING:
    from meshxmpp.storage.base import Storage

__all__ = [
    "MAX_FILE_SIZE",
    "ImportReport",
    "ProsodyAccount",
    "ProsodyDataError",
    "ProsodyHost",
    "account_credentials",
    "apply",
    "decode_name",
    "encode_name",
    "find_hosts",
    "read_host",
    "roster_items",
]

#: Largest store file read; a Prosody roster of 10 000 contacts is about 1.5 MB.
MAX_FILE_SIZE = 32 * 1024 * 1024
#: Longest roster item name or group kept (``meshxmpp.im.roster.MAX_TEXT``).
MAX_TEXT = 1023
#: Stores known to hold data this importer does not move (docs/import.md), for the report.
NOT_IMPORTED = {
    "offline": "offline messages",
    "vcard": "vCards (vcard-temp)",
    "vcard4": "vCards (XEP-0292)",
    "private": "private XML storage (bookmarks)",
    "pep": "PEP nodes",
    "pep_data": "PEP items",
    "archive": "message archive (MAM)",
    "archive2": "message archive (MAM)",
    "persistent": "MUC rooms",
    "config": "MUC room configuration",
    "cron": "scheduled tasks",
    "smacks_h": "stream management counters",
    "account_details": "registration details",
    "accounts_cleanup": "account clean-up records",
    "blocklist": "block lists (XEP-0191)",
    "privacy": "privacy lists",
    "lastlog": "last login times",
    "lastlog2": "last login times",
    "muc_log": "MUC logs",
    "uploads": "HTTP upload records",
    "roster_groups": "shared roster groups",
    "tokens": "authentication tokens",
}

_SUBSCRIPTIONS = ("none", "to", "from", "both")
_HASH_BY_KEY_LENGTH = {20: "SHA-1", 32: "SHA-256"}
_XML_INVALID = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_ENCODED = re.compile(r"(?:[A-Za-z0-9]|%[0-9A-Fa-f]{2})+")
_XML_LANG = ns.XML + "\x01lang"


class ProsodyDataError(Exception):
    """The data directory cannot be imported at all (missing, wrong layout, unknown host)."""


# ------------------------------------------------------------------------------------------------
# names


def encode_name(name: str) -> str:
    """``util.datamanager``'s ``encode``: every byte but ASCII letters and digits as ``%xx``."""
    return "".join(
        chr(b) if (0x30 <= b <= 0x39 or 0x41 <= b <= 0x5A or 0x61 <= b <= 0x7A) else f"%{b:02x}"
        for b in name.encode("utf-8")
    )


def decode_name(encoded: str) -> str:
    """The name a ``util.datamanager`` path component encodes; ValueError if it is not one."""
    if not _ENCODED.fullmatch(encoded):
        raise ValueError(f"not a Prosody-encoded name: {encoded!r}")
    raw = bytearray()
    i = 0
    while i < len(encoded):
        if encoded[i] == "%":
            raw.append(int(encoded[i + 1:i + 3], 16))
            i += 3
        else:
            raw.append(ord(encoded[i]))
            i += 1
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"not UTF-8 once decoded: {encoded!r}") from None


def find_hosts(data_dir: Path) -> dict[str, Path]:
    """Prosody hosts in ``data_dir``: decoded and normalised domain -> directory."""
    if not data_dir.is_dir():
        raise ProsodyDataError(f"{data_dir} is not a directory")
    hosts: dict[str, Path] = {}
    for entry in sorted(data_dir.iterdir()):
        if not entry.is_dir() or entry.name == "_global":
            continue
        try:
            domain = JID.parse(decode_name(entry.name)).domain
        except (ValueError, InvalidJID):
            continue  # not a host directory (a backup, lost+found...)
        hosts.setdefault(domain, entry)
    return hosts


# ------------------------------------------------------------------------------------------------
# reading


@dataclass(slots=True)
class ProsodyAccount:
    user: str  # bare JID
    creds: dict[str, ScramCredentials] | None  # None: could not be imported, see problem
    kind: str = ""  # "SCRAM-SHA-1", "SCRAM-SHA-256" or "plain password"
    problem: str | None = None


@dataclass(slots=True)
class ProsodyHost:
    domain: str
    path: Path
    accounts: list[ProsodyAccount] = field(default_factory=list)
    rosters: dict[str, list[RosterItem]] = field(default_factory=dict)  # user -> items
    warnings: list[str] = field(default_factory=list)
    other_stores: dict[str, int] = field(default_factory=dict)  # store -> number of files, not imported


def _read(path: Path, max_size: int) -> LuaValue:
    with path.open("rb") as f:
        data = f.read(max_size + 1)
    if len(data) > max_size:
        raise LuaDataError(f"larger than {max_size} bytes", source=str(path))
    return parse_file(data, max_size=max_size, source=str(path))


def _store_files(store: Path) -> Iterator[tuple[str, Path]]:
    """(encoded user name, file) of every ``<user>.dat`` (not Prosody's ``.dat~`` scratch files)."""
    if not store.is_dir():
        return
    for f in sorted(store.iterdir()):
        if f.suffix == ".dat" and f.is_file():
            yield f.stem, f


def _user_jid(encoded: str, domain: str) -> str:
    try:
        jid = JID.parse(f"{decode_name(encoded)}@{domain}")
    except InvalidJID as exc:
        raise ValueError(f"invalid user name {encoded!r}: {exc}") from None
    if jid.local is None or jid.resource is not None:
        raise ValueError(f"invalid user name {encoded!r}")
    return str(jid.bare)


def _hex(value: LuaValue, what: str) -> bytes:
    if not isinstance(value, str):
        raise ValueError(f"{what} missing or not a string")
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise ValueError(f"{what} is not hexadecimal") from None


def account_credentials(table: LuaValue) -> tuple[dict[str, ScramCredentials], str]:
    """meshxmpp credentials of one Prosody ``accounts`` record, and what they came from.

    ``password`` (``authentication = "internal_plain"``, or an account not yet hashed): SCRAM
    credentials for SHA-1 and SHA-256, as ``adduser`` makes. ``stored_key``/``server_key``/
    ``salt``/``iteration_count`` (``internal_hashed``, the default): the same SCRAM credentials,
    under the hash their length says (SHA-1 by default; SHA-256 with Prosody's
    ``password_hash = "SHA-256"``). ValueError when the record is neither.
    """
    if not isinstance(table, dict):
        raise ValueError("account record is not a table")
    password = table.get("password")
    if isinstance(password, str) and password:
        return derive_credentials(password), "plain password"
    if isinstance(password, bytes):
        raise ValueError("plain password is not UTF-8")
    if "stored_key" not in table and "hashed_password" in table:
        raise ValueError("Prosody 0.8 'hashed_password' record (log in once on Prosody 0.9+ to upgrade it)")
    stored_key = _hex(table.get("stored_key"), "stored_key")
    server_key = _hex(table.get("server_key"), "server_key")
    hash_name = _HASH_BY_KEY_LENGTH.get(len(stored_key))
    if hash_name is None or len(server_key) != len(stored_key):
        raise ValueError(f"stored_key/server_key of {len(stored_key)}/{len(server_key)} bytes match no hash")
    salt = table.get("salt")
    if isinstance(salt, str):
        salt_bytes = salt.encode("utf-8")
    elif isinstance(salt, bytes):
        salt_bytes = salt
    else:
        raise ValueError("salt missing or not a string")
    if not salt_bytes:
        raise ValueError("empty salt")
    iterations = table.get("iteration_count")
    if isinstance(iterations, float) and iterations.is_integer():
        iterations = int(iterations)
    if not isinstance(iterations, int) or isinstance(iterations, bool) or not 1 <= iterations <= 10_000_000:
        raise ValueError("iteration_count missing or out of range")
    creds = ScramCredentials(hash_name=hash_name, salt=salt_bytes, iterations=iterations,
                             stored_key=stored_key, server_key=server_key)
    return {hash_name: creds}, "SCRAM-" + hash_name


def _text(value: LuaValue, what: str, warnings: list[str]) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
        warnings.append(f"{what}: not UTF-8, invalid bytes replaced")
    if not isinstance(value, str):
        warnings.append(f"{what}: not a string, dropped")
        return None
    clean = _XML_INVALID.sub("", value)
    if clean != value:
        warnings.append(f"{what}: characters XML cannot carry removed")
    if len(clean) > MAX_TEXT:
        clean = clean[:MAX_TEXT]
        warnings.append(f"{what}: cut to {MAX_TEXT} characters")
    return clean or None


def _contact(key: object) -> str | None:
    if not isinstance(key, str):
        return None
    try:
        jid = JID.parse(key)
    except InvalidJID:
        return None
    return str(jid) if jid.resource is None else None


def _stanza_element(t: LuaValue, parent_ns: str, depth: int) -> Element:
    """An element from ``util.stanza.preserialize``'s table: ``{name=, attr={}, [1..n]=children}``."""
    if depth > 32 or not isinstance(t, dict):
        raise ValueError("not a stanza")
    name, attr = t.get("name"), t.get("attr", {})
    if not isinstance(name, str) or not isinstance(attr, dict):
        raise ValueError("not a stanza")
    el_ns = attr.get("xmlns", parent_ns)
    if not isinstance(el_ns, str):
        raise ValueError("not a stanza")
    attrs: dict[str, str] = {}
    for k, v in attr.items():
        if not isinstance(k, str) or not isinstance(v, str) or k == "xmlns":
            continue
        if k == _XML_LANG:
            attrs["xml:lang"] = v
        elif "\x01" not in k and ":" not in k:  # other namespaced attributes are dropped
            attrs[k] = _XML_INVALID.sub("", v)
    el = Element(name, el_ns, attrs)
    i = 1
    while i in t:
        child = t[i]
        if isinstance(child, str):
            el.append(_XML_INVALID.sub("", child))
        elif isinstance(child, dict):
            el.append(_stanza_element(child, el_ns, depth + 1))
        i += 1
    return el


def _pending_stanza(value: LuaValue, user: str, contact: str) -> str | None:
    """The stored ``<presence type='subscribe'/>`` of a pending request, as meshxmpp keeps it."""
    if not isinstance(value, dict):
        return None  # `true`: Prosody kept no stanza; meshxmpp makes a plain one when needed
    try:
        el = _stanza_element(value, ns.CLIENT, 0)
        if el.name != "presence" or el.ns != ns.CLIENT:
            return None
        el.set("from", contact)
        el.set("to", user)
        el.set("type", "subscribe")
        text = to_str(el)
        parse_element(text, max_size=len(text.encode()) + 1024, max_depth=1000)  # it must load back
    except (ValueError, StreamError):
        return None
    return text


def roster_items(user: str, table: LuaValue, warnings: list[str]) -> list[RosterItem]:
    """meshxmpp roster items of one Prosody ``roster`` record (``core.rostermanager``'s shape).

    Contacts: ``[jid] = {subscription=, ask="subscribe", name=, groups={[g]=true}, approved="true"}``;
    pending incoming requests: ``[false].pending[jid] = <preserialized stanza> | true`` (Prosody
    0.9's top-level ``pending`` table too). A pending request from someone not in the roster
    becomes a hidden item, as meshxmpp stores it.
    """
    if not isinstance(table, dict):
        raise ValueError("roster record is not a table")
    items: dict[str, RosterItem] = {}
    pending: LuaValue = None
    meta = table.get(FALSE)
    if isinstance(meta, dict):
        pending = meta.get("pending")
    legacy = table.get("pending")
    legacy_pending = isinstance(legacy, dict) and not isinstance(legacy.get("subscription"), str)
    if legacy_pending:
        pending = legacy  # Prosody before 0.10 kept pending requests at the top level
    for key, value in table.items():
        if key is FALSE or (legacy_pending and key == "pending"):
            continue
        contact = _contact(key)
        if contact is None:
            warnings.append(f"{user}: roster entry {str(key)[:80]!r} is not a bare JID, skipped")
            continue
        if not isinstance(value, dict):
            warnings.append(f"{user}: roster entry {contact} is not a table, skipped")
            continue
        if contact in items:
            warnings.append(f"{user}: roster entry {contact} given twice (after normalisation), kept once")
            continue
        what = f"{user}: roster entry {contact}"
        subscription = value.get("subscription", "none")
        if subscription not in _SUBSCRIPTIONS:
            warnings.append(f"{what}: subscription {str(subscription)[:20]!r} unknown, set to 'none'")
            subscription = "none"
        groups: set[str] = set()
        raw_groups = value.get("groups", {})
        if isinstance(raw_groups, dict):
            for g in raw_groups:
                if isinstance(g, (str, bytes)):
                    text = _text(g, f"{what}: group", warnings)
                    if text:
                        groups.add(text)
        items[contact] = RosterItem(
            jid=contact,
            name=_text(value.get("name"), f"{what}: name", warnings),
            subscription=str(subscription),
            ask=value.get("ask") == "subscribe",
            approved=value.get("approved") in ("true", True),
            groups=tuple(sorted(groups)),
        )
    if isinstance(pending, dict):
        for key, value in pending.items():
            contact = _contact(key)
            if contact is None:
                warnings.append(f"{user}: pending request from {str(key)[:80]!r} is not a bare JID, skipped")
                continue
            stanza = _pending_stanza(value, user, contact)
            item = items.get(contact) or RosterItem(jid=contact, hidden=True)
            items[contact] = dataclasses.replace(item, pending_in=True, pending_in_stanza=stanza)
    return [items[k] for k in sorted(items)]


def read_host(data_dir: Path, domain: str, *, max_file_size: int = MAX_FILE_SIZE) -> ProsodyHost:
    """Read accounts and rosters of Prosody host ``domain`` in ``data_dir``.

    Files that cannot be read become `ProsodyAccount.problem` or warnings; only a data directory
    that is not one (or lacks the host) raises `ProsodyDataError`.
    """
    if (data_dir / "prosody.sqlite").exists() and not any(data_dir.glob("*/accounts")):
        raise ProsodyDataError(
            f"{data_dir} holds Prosody's SQL storage (prosody.sqlite), not its file storage: convert it "
            "first with prosody-migrator (docs/import.md)"
        )
    hosts = find_hosts(data_dir)
    want = JID.parse(domain).domain
    if want not in hosts:
        found = ", ".join(sorted(hosts)) or "none"
        raise ProsodyDataError(
            f"no Prosody host {want!r} in {data_dir} (expected a directory {encode_name(want)}; hosts found: "
            f"{found}); pass --domain to import another host"
        )
    host = ProsodyHost(domain=want, path=hosts[want])
    for encoded, path in _store_files(host.path / "accounts"):
        try:
            user = _user_jid(encoded, want)
        except ValueError as exc:
            host.warnings.append(f"{path}: {exc}, skipped")
            continue
        try:
            creds, kind = account_credentials(_read(path, max_file_size))
        except (LuaDataError, OSError) as exc:
            host.accounts.append(ProsodyAccount(user, None, problem=f"unreadable: {exc}"))
            continue
        except ValueError as exc:
            host.accounts.append(ProsodyAccount(user, None, problem=str(exc)))
            continue
        host.accounts.append(ProsodyAccount(user, creds, kind))
    for encoded, path in _store_files(host.path / "roster"):
        try:
            user = _user_jid(encoded, want)
            host.rosters[user] = roster_items(user, _read(path, max_file_size), host.warnings)
        except (LuaDataError, OSError, ValueError) as exc:
            host.warnings.append(f"{path}: {exc}; roster skipped")
    for store in sorted(host.path.iterdir()):
        if store.is_dir() and store.name not in ("accounts", "roster"):
            files = sum(1 for f in store.iterdir() if not f.name.endswith("~"))
            if files:
                host.other_stores[store.name] = files
    return host


# ------------------------------------------------------------------------------------------------
# writing


@dataclass(slots=True)
class ImportReport:
    dry_run: bool
    created: list[str] = field(default_factory=list)
    existing: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # user, why
    items_added: int = 0
    items_present: int = 0
    rosters_without_account: list[str] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)  # what was done (or would be), in order


async def apply(storage: Storage, host: ProsodyHost, *, dry_run: bool = False) -> ImportReport:
    """Create the accounts of ``host`` that do not exist and add the roster items missing.

    Idempotent: an existing account keeps its credentials; a roster item whose contact is already
    in that user's meshxmpp roster is left as it is, so running again after a partial run (or
    after users changed their rosters here) only fills in what is missing. ``dry_run``: only
    reads ``storage``, and reports what it would do.
    """
    report = ImportReport(dry_run=dry_run)
    would = "would " if dry_run else ""
    would_be = "would be " if dry_run else ""
    present: set[str] = set()
    for account in host.accounts:
        if account.creds is None:
            report.failed.append((account.user, account.problem or "unreadable"))
            report.lines.append(f"failed {account.user}: {account.problem}")
            continue
        if dry_run:
            created = not await storage.accounts.exists(account.user)
        else:
            created = await storage.accounts.create(account.user, account.creds)
        if created:
            report.created.append(account.user)
            report.lines.append(f"{would}create {account.user} ({account.kind})")
        else:
            report.existing.append(account.user)
            report.lines.append(f"skip {account.user}: account exists (credentials left unchanged)")
        present.add(account.user)
    for user, items in sorted(host.rosters.items()):
        if user not in present and not await storage.accounts.exists(user):
            report.rosters_without_account.append(user)
            report.lines.append(f"skip roster of {user}: no such account")
            continue
        have = {item.jid for item in await storage.rosters.items(user)}
        added = 0
        for item in items:
            if item.jid in have:
                report.items_present += 1
                continue
            if not dry_run:
                await storage.rosters.put(user, item)
            added += 1
        report.items_added += added
        if items:
            report.lines.append(
                f"roster of {user}: {added} item(s) {would_be}added, {len(items) - added} already present"
            )
    return report
