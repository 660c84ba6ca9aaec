"""Configuration: one tree of frozen attrs classes, loaded from TOML with cattrs.

Every option has a default, so a node runs with no file at all. Each field carries its own
documentation in ``metadata``: ``doc`` (what it means), ``expect`` (what values it accepts, used both
in error messages and in the reference table) and an optional ``check``. ``reference_markdown()``
renders docs/configuration.md from those, so the reference cannot drift from the code.

Errors name the key: ``config error at c2s.port: must be an integer between 0 and 65535 (got "abc")``.
Validation runs whenever a ``Config`` is built (loading, ``evolve``, direct construction), so a
``Config`` object that exists is a valid one.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import ipaddress
import json
import math
import os
import re
import tomllib
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import attrs
import cattrs
from cattrs.errors import (
    ClassValidationError,
    ForbiddenExtraKeysError,
    IterableValidationError,
)
from cattrs.gen import make_dict_structure_fn, override

from meshxmpp.jid import JID, InvalidJID, prepare_domainpart
from meshxmpp.mesh._swim_timing import PROFILES, Timing

__all__ = [
    "C2SConfig",
    "ComponentService",
    "ComponentsConfig",
    "Config",
    "ConfigError",
    "HTTPConfig",
    "LOG_LEVELS",
    "MESH_PROFILES",
    "MESH_SECRET_ENV",
    "MUCConfig",
    "MeshConfig",
    "OFFLINE_DELIVERY",
    "OfflineConfig",
    "ROUTING_POLICIES",
    "RoutingConfig",
    "STORAGE_BACKENDS",
    "SenderRule",
    "ShutdownConfig",
    "LitestreamConfig",
    "StorageConfig",
    "TLSConfig",
    "evolve",
    "load_config",
    "reference_markdown",
]

ROUTING_POLICIES = ("most-available", "top-priority-all", "all-non-negative", "all-connected")
OFFLINE_DELIVERY = ("first-resource", "all-resources")
STORAGE_BACKENDS = ("sqlite", "postgres", "memory")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
MESH_DISCOVERY = ("static", "database", "dns")

# Openfire's property names, accepted under [routing] for operators who migrate.
ALL_RESOURCES_KEY = "route.all-resources"
REALLY_ALL_RESOURCES_KEY = "route.really-all-resources"


class ConfigError(Exception):
    """A configuration problem; ``key`` is the dotted path (``"c2s.port"``), ``""`` for the file."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(key, message)
        self.key = key
        self.message = message

    def __str__(self) -> str:
        if self.key:
            return f"config error at {self.key}: {self.message}"
        return f"config error: {self.message}"


# ---------------------------------------------------------------------------------------------
# value checks: predicates; a failing one reports "must be <expect> (got <value>)"


def _show(value: object) -> str:
    """A value as the operator wrote it (TOML-ish), shortened."""
    try:
        text = json.dumps(value, ensure_ascii=False, default=repr)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _in_range(lo: float, hi: float | None = None) -> Callable[[Any], bool]:
    def ok(v: Any) -> bool:
        return v >= lo and (hi is None or v <= hi)

    return ok


def _one_of(choices: tuple[str, ...]) -> Callable[[Any], bool]:
    return lambda v: v in choices


def _choices(choices: tuple[str, ...]) -> str:
    return "one of " + ", ".join(f'"{c}"' for c in choices)


_HOST_LABEL = re.compile(r"^[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?$")


def is_domain(v: Any) -> bool:
    """A DNS name (LDH or IDN labels) or an IP literal, as allowed in a JID domainpart."""
    if not isinstance(v, str) or not v or len(v) > 253:
        return False
    try:
        prepare_domainpart(v)
    except InvalidJID:
        return False
    if v.startswith("[") and v.endswith("]"):
        return _is_ip(v[1:-1], version=6)
    if _is_ip(v, version=4):
        return True
    for label in v.split("."):
        if not label.isascii():
            try:
                label = label.encode("idna").decode("ascii")
            except UnicodeError:
                continue  # IDNA2008 labels that the IDNA2003 codec refuses: prepare_domainpart accepted it
        if not _HOST_LABEL.match(label.lower()):
            return False
    return True


def _is_ip(v: str, version: int | None = None) -> bool:
    try:
        addr = ipaddress.ip_address(v)
    except ValueError:
        return False
    return version is None or addr.version == version


def _is_hostname(v: str) -> bool:
    return bool(v) and len(v) <= 253 and all(_HOST_LABEL.match(lbl) for lbl in v.lower().split("."))


def is_bind_address(v: Any) -> bool:
    return isinstance(v, str) and (_is_ip(v) or _is_hostname(v))


def parse_peer(v: str) -> tuple[str, int]:
    """``"host:port"`` or ``"[v6]:port"`` -> (host, port); raises ValueError."""
    host, sep, port_s = v.rpartition(":")
    if not sep or not port_s.isdigit():
        raise ValueError(v)
    port = int(port_s)
    if not 1 <= port <= 65535:
        raise ValueError(v)
    if host.startswith("[") and host.endswith("]"):
        if not _is_ip(host[1:-1], version=6):
            raise ValueError(v)
        return host[1:-1], port
    if not (_is_ip(host, version=4) or _is_hostname(host)):
        raise ValueError(v)
    return host, port


def _is_peer(v: Any) -> bool:
    try:
        parse_peer(v)
    except ValueError:
        return False
    return True


def _normalize_domain(v: Any) -> Any:
    # The form JIDs use (RFC 7622 3.2: lowercase, U-labels, no trailing dot), so that
    # config.domain compares equal to JID.parse(...).domain.
    if isinstance(v, str):
        try:
            return prepare_domainpart(v)
        except InvalidJID:
            return v  # left for is_domain to reject with the key's name
    return v


def _normalize_lower(v: Any) -> Any:
    return v.lower() if isinstance(v, str) else v


def _to_tuple(v: Any) -> Any:
    # Lets code pass lists (evolve(cfg, mesh={"peers": [...]})) while the tree stays hashable.
    return tuple(v) if isinstance(v, list) else v


def _non_empty(v: Any) -> bool:
    return isinstance(v, str) and v != ""


# ---------------------------------------------------------------------------------------------
# field helpers


_PORT = "an integer between 0 and 65535"
_POSITIVE = "a number of seconds greater than 0"
_DOMAIN = 'a domain name such as "example.org"'
_BIND = 'an IP address or host name to listen on, such as "0.0.0.0" or "::"'


def _opt(
    default: Any,
    *,
    doc: str,
    expect: str,
    check: Callable[[Any], bool] | None = None,
    item_check: Callable[[Any], bool] | None = None,
    item_expect: str | None = None,
    key: str | None = None,
    unset: str | None = None,
    normalize: Callable[[Any], Any] | None = None,
) -> Any:
    metadata = {
        "doc": doc,
        "expect": expect,
        "check": check,
        "item_check": item_check,
        "item_expect": item_expect,
        "key": key,
        "unset": unset,
    }
    return attrs.field(default=default, metadata=metadata, converter=normalize)


def _required(
    *,
    doc: str,
    expect: str,
    check: Callable[[Any], bool] | None = None,
    normalize: Callable[[Any], Any] | None = None,
) -> Any:
    metadata = {"doc": doc, "expect": expect, "check": check, "required": True}
    return attrs.field(metadata=metadata, converter=normalize)


def _table(cls: type, doc: str) -> Any:
    return attrs.field(factory=cls, metadata={"doc": doc, "expect": "a table"})


# ---------------------------------------------------------------------------------------------
# the tree


@attrs.define(frozen=True, kw_only=True)
class C2SConfig:
    """Client-to-server connections (RFC 6120)."""

    bind: str = _opt(
        "0.0.0.0", doc="Address the client listener binds to.", expect=_BIND, check=is_bind_address
    )
    port: int = _opt(
        5222,
        doc="Client port (STARTTLS). 0 picks a free port (tests).",
        expect=_PORT,
        check=_in_range(0, 65535),
    )
    direct_tls_port: int | None = _opt(
        None,
        doc="Direct TLS port (XEP-0368, usually 5223).",
        expect=_PORT,
        check=_in_range(0, 65535),
        unset="unset: no direct TLS listener",
    )
    require_encryption: bool = _opt(
        True,
        doc="Clients must start TLS before authenticating; false also offers PLAIN without TLS (tests only).",
        expect="true or false",
    )
    negotiation_timeout: float = _opt(
        30.0,
        doc="Seconds a client has from connecting to a bound resource.",
        expect=_POSITIVE,
        check=lambda v: v > 0,
    )
    idle_timeout: float = _opt(
        600.0,
        doc="Seconds without any input (keepalives count) before a session is closed (never earlier; "
        "at most 1/16 later, since the deadline is extended lazily).",
        expect=_POSITIVE,
        check=lambda v: v > 0,
    )
    write_timeout: float = _opt(
        30.0,
        doc="Seconds a single socket write may take before the connection is dropped.",
        expect=_POSITIVE,
        check=lambda v: v > 0,
    )
    outbox_limit: int = _opt(
        1048576,
        doc="Bytes queued for one slow client before it is disconnected.",
        expect="a positive integer (bytes)",
        check=lambda v: v > 0,
    )
    max_stanza_size: int = _opt(
        262144,
        doc="Largest stanza accepted after authentication, in bytes.",
        expect="a positive integer (bytes)",
        check=lambda v: v > 0,
    )
    max_stanza_size_preauth: int = _opt(
        8192,
        doc="Largest stanza accepted before authentication, in bytes.",
        expect="a positive integer (bytes)",
        check=lambda v: v > 0,
    )
    max_depth: int = _opt(
        64,
        doc="Deepest element nesting accepted in a stanza.",
        expect="a positive integer",
        check=lambda v: v > 0,
    )
    auth_failure_delay: float = _opt(
        1.0,
        doc="Seconds to wait before answering a failed authentication (slows down password guessing).",
        expect="a number of seconds, 0 or more",
        check=lambda v: v >= 0,
    )
    max_auth_attempts: int = _opt(
        3,
        doc="Failed authentications on one stream before it is closed.",
        expect="a positive integer",
        check=lambda v: v > 0,
    )


@attrs.define(frozen=True, kw_only=True)
class TLSConfig:
    """The certificate offered on STARTTLS and direct TLS."""

    cert: str | None = _opt(
        None,
        doc="PEM certificate chain file.",
        expect="a file path",
        check=_non_empty,
        unset="unset: a development certificate in data_dir, generated once",
    )
    key: str | None = _opt(
        None,
        doc="PEM private key file for `cert`.",
        expect="a file path",
        check=_non_empty,
        unset="unset (set both cert and key, or neither)",
    )


_GO_DURATION = re.compile(r"(?:\d+(?:\.\d+)?(?:ns|us|µs|ms|s|m|h))+")


def _is_go_duration(v: Any) -> bool:
    return isinstance(v, str) and _GO_DURATION.fullmatch(v) is not None and any(c in "123456789" for c in v)


@attrs.define(frozen=True, kw_only=True)
class LitestreamConfig:
    """Continuous replication of the SQLite database by Litestream, run by `meshxmpp serve` as a child
    process (needs `pip install meshxmpp[litestream]`); docs/operations.md ("Backup and restore")."""

    replica: str | None = _opt(
        None,
        doc="Where Litestream replicates to: any replica URL Litestream accepts (`file:///var/backups/meshxmpp`, "
        "`s3://bucket/path`, `sftp://host/path`...), credentials from the environment (e.g. "
        "LITESTREAM_ACCESS_KEY_ID). Setting it turns replication on.",
        expect="a Litestream replica URL",
        check=_non_empty,
        unset="unset: no replication",
    )
    sync_interval: str = _opt(
        "1s",
        doc="How often Litestream ships new WAL frames to the replica; at most this much of what was "
        "committed is lost with the disk.",
        expect='a Go duration such as "1s", "500ms" or "1m"',
        check=_is_go_duration,
    )
    restore_if_missing: bool = _opt(
        False,
        doc="When the database file does not exist at startup (a new machine, an empty volume), restore it "
        "from the replica before accepting clients (a replica with no backup yet starts empty).",
        expect="true or false",
    )


@attrs.define(frozen=True, kw_only=True)
class StorageConfig:
    """Where accounts, rosters and offline messages live."""

    backend: str = _opt(
        "sqlite",
        doc='"sqlite" (embedded, persistent; nodes on one host may share the file), "postgres" (a '
        'PostgreSQL server shared by nodes on several machines; set `dsn`) or "memory" (lost on exit; '
        "tests). See docs/storage.md.",
        expect=_choices(STORAGE_BACKENDS),
        check=_one_of(STORAGE_BACKENDS),
    )
    path: str | None = _opt(
        None,
        doc="SQLite database file.",
        expect="a file path",
        check=_non_empty,
        unset="unset: <data_dir>/meshxmpp.sqlite3",
    )
    dsn: str | None = _opt(
        None,
        doc='PostgreSQL connection string for backend = "postgres": a libpq URI '
        "(`postgresql://meshxmpp@db.example.org/meshxmpp`) or `key=value` pairs. Leave the password out "
        "and use PGPASSWORD or ~/.pgpass; `?options=-csearch_path%3Dname` picks a schema.",
        expect="a PostgreSQL connection string",
        check=_non_empty,
        unset='unset (required when backend = "postgres")',
    )
    pool_size: int = _opt(
        10,
        doc='postgres: connections each node keeps open (and storage calls it runs at once).',
        expect="a positive integer",
        check=lambda v: v >= 1,
    )
    timeout: float = _opt(
        30.0,
        doc="postgres: seconds one storage call may wait for a connection, and each statement may run, "
        "before it fails.",
        expect=_POSITIVE,
        check=lambda v: v > 0,
    )
    litestream: LitestreamConfig = _table(LitestreamConfig, "sqlite: replication by Litestream.")


@attrs.define(frozen=True, kw_only=True)
class OfflineConfig:
    """Offline messages (XEP-0160)."""

    max_per_user: int = _opt(
        1000,
        doc="Messages stored per user; more are bounced. 0 disables offline storage.",
        expect="an integer, 0 or more",
        check=lambda v: v >= 0,
    )
    delivery: str = _opt(
        "first-resource",
        doc="Who gets stored messages: the first resource to send initial presence (XEP-0160), or "
        "every recently seen resource, each once (see docs/offline.md).",
        expect=_choices(OFFLINE_DELIVERY),
        check=_one_of(OFFLINE_DELIVERY),
    )
    resource_memory: float = _opt(
        30 * 24 * 3600.0,
        doc="all-resources: seconds after which a resource not seen is forgotten (no longer waited for).",
        expect="a number of seconds > 0",
        check=lambda v: v > 0,
    )
    max_age: float = _opt(
        7 * 24 * 3600.0,
        doc="all-resources: seconds after which a stored message is no longer delivered, and deleted.",
        expect="a number of seconds > 0",
        check=lambda v: v > 0,
    )


@attrs.define(frozen=True, kw_only=True)
class SenderRule:
    """One `[[routing.sender]]` entry: a different policy for messages from some senders. The most
    specific match wins: a bare JID, then an exact domain, then the longest `*.` suffix."""

    match: str = _required(
        doc='Who sends: a bare JID ("bot@example.org"), a domain ("example.org") or its subdomains '
        '("*.example.org").',
        expect='a bare JID, a domain or "*.domain"',
        check=lambda v: _is_sender_pattern(v),
    )
    policy: str = _required(
        doc="Policy for messages from matching senders.",
        expect=_choices(ROUTING_POLICIES),
        check=_one_of(ROUTING_POLICIES),
    )


def _is_sender_pattern(v: Any) -> bool:
    """What the routing engine accepts as ``match``: domain, ``*.domain`` or bare JID."""
    if not isinstance(v, str) or not v:
        return False
    wildcard = v.startswith("*.")
    try:
        jid = JID.parse(v[2:] if wildcard else v)
    except InvalidJID:
        return False
    return jid.resource is None and not (wildcard and jid.local is not None)


_STORE_OR_BOUNCE = ("store", "bounce")


@attrs.define(frozen=True, kw_only=True)
class RoutingConfig:
    """How the node picks who gets a stanza: the policy for messages to a bare JID and each choice
    RFC 6121 section 8.5 leaves open (docs/routing.md has the decision tables)."""

    policy: str = _opt(
        "top-priority-all",
        doc="Chat and normal messages to a bare JID: most-available, one session (highest priority, then "
        "show, then most recent activity); top-priority-all, every available session tied at the highest "
        "non-negative priority; all-non-negative, every available session with priority 0 or more; "
        "all-connected, every bound session.",
        expect=_choices(ROUTING_POLICIES),
        check=_one_of(ROUTING_POLICIES),
    )
    sender: tuple[SenderRule, ...] = _opt(
        (),
        doc="Per-sender policies (see [[routing.sender]]).",
        expect="a list of tables",
        item_expect="a table",
        normalize=_to_tuple,
    )
    all_negative: str = _opt(
        "store",
        doc="Chat/normal to the bare JID when every available resource has a negative priority.",
        expect=_choices(_STORE_OR_BOUNCE),
        check=_one_of(_STORE_OR_BOUNCE),
    )
    no_available: str = _opt(
        "store",
        doc="Chat/normal to the bare JID when no resource is available (store: offline messages).",
        expect=_choices(_STORE_OR_BOUNCE),
        check=_one_of(_STORE_OR_BOUNCE),
    )
    absent_normal: str = _opt(
        "bounce",
        doc="Normal message to a full JID that is not bound (bare: handle as sent to the bare JID).",
        expect=_choices(("bounce", "drop", "bare")),
        check=_one_of(("bounce", "drop", "bare")),
    )
    absent_headline: str = _opt(
        "drop",
        doc="Headline message to a full JID that is not bound.",
        expect=_choices(("drop", "bounce", "bare")),
        check=_one_of(("drop", "bounce", "bare")),
    )
    absent_groupchat: str = _opt(
        "bounce",
        doc="Groupchat message to a full JID that is not bound.",
        expect=_choices(("bounce", "drop")),
        check=_one_of(("bounce", "drop")),
    )
    unknown_user: str = _opt(
        "bounce",
        doc="Message to an account that does not exist (drop hides which accounts exist).",
        expect=_choices(("bounce", "drop")),
        check=_one_of(("bounce", "drop")),
    )
    store_chat_states: bool = _opt(
        False,
        doc="Store messages that carry only a chat state (XEP-0085) offline.",
        expect="true or false",
    )
    all_resources: bool = _opt(
        False,
        key=ALL_RESOURCES_KEY,
        doc='Openfire alias: true means policy = "top-priority-all"; false changes nothing.',
        expect="true or false",
    )
    really_all_resources: bool = _opt(
        False,
        key=REALLY_ALL_RESOURCES_KEY,
        doc='Openfire alias: true means policy = "all-non-negative" (wins over route.all-resources); '
        "false changes nothing.",
        expect="true or false",
    )

    def routing_dict(self) -> dict[str, Any]:
        """The ``[routing]`` table as plain data, for ``PolicyConfig.from_routing_config``.

        ``policy`` is already the effective one. An alias is passed as ``True`` when set and ``None``
        otherwise (never ``False``), so the engine cannot read a different policy into it.
        """
        d: dict[str, Any] = {
            f.name: getattr(self, f.name) for f in attrs.fields(RoutingConfig) if not f.metadata.get("key")
        }
        d["sender"] = [{"match": r.match, "policy": r.policy} for r in self.sender]
        d[ALL_RESOURCES_KEY] = True if self.all_resources else None
        d[REALLY_ALL_RESOURCES_KEY] = True if self.really_all_resources else None
        return d


@attrs.define(frozen=True, kw_only=True)
class MUCConfig:
    """Multi-user chat (XEP-0045, docs/muc.md): the service runs when domain is set."""

    domain: str | None = _opt(
        None,
        doc='Conference domain, e.g. "conference.example.org".',
        expect=_DOMAIN,
        check=is_domain,
        normalize=_normalize_domain,
        unset="unset: no MUC service",
    )
    history_size: int = _opt(
        20,
        doc="Messages a new room keeps as history for joining occupants (its owner can change it); 0: none.",
        expect="an integer, 0 to 1000",
        check=lambda v: 0 <= v <= 1000,
    )
    default_persistent: bool = _opt(
        False,
        doc="Whether a new room is persistent (kept when empty and across restarts) until its owner "
        "configures it otherwise.",
        expect="true or false",
    )


@attrs.define(frozen=True, kw_only=True)
class ComponentService:
    """One `[[components.service]]` entry: an external component allowed to connect."""

    domain: str = _required(
        doc="The component's domain.", expect=_DOMAIN, check=is_domain, normalize=_normalize_domain
    )
    secret: str = _required(
        doc="Shared secret of the XEP-0114 handshake.", expect="a non-empty string", check=_non_empty
    )


@attrs.define(frozen=True, kw_only=True)
class ComponentsConfig:
    """External components (XEP-0114); the listener runs when a [[components.service]] is listed."""

    bind: str = _opt(
        "127.0.0.1",
        doc="Address the component listener binds to (components authenticate with a shared secret "
        "over plain TCP: keep it on loopback or a private network).",
        expect=_BIND,
        check=is_bind_address,
    )
    port: int = _opt(
        5347,
        doc="Component listener port. 0 picks a free port (tests).",
        expect=_PORT,
        check=_in_range(0, 65535),
    )
    service: tuple[ComponentService, ...] = _opt(
        (),
        doc="Allowed components (see [[components.service]]).",
        expect="a list of tables",
        item_expect="a table",
        normalize=_to_tuple,
    )


_SECRET_EXPECT = "a non-empty string, or a non-empty list of non-empty strings"
_SECRET_TYPE: Any = str | tuple[str, ...] | None


def _is_secret(v: Any) -> bool:
    if isinstance(v, str):
        return v != ""
    return isinstance(v, tuple) and len(v) > 0 and all(isinstance(s, str) and s != "" for s in v)


def is_node_name(v: Any) -> bool:
    """1 to 64 bytes of printable UTF-8 without whitespace (a mesh node's name)."""
    if not isinstance(v, str) or not v.isprintable() or any(c.isspace() for c in v):
        return False
    try:
        size = len(v.encode("utf-8"))
    except UnicodeEncodeError:  # lone surrogates
        return False
    return 1 <= size <= 64


MESH_PROFILES = tuple(PROFILES)
MESH_SECRET_ENV = "MESHXMPP_MESH_SECRET"
_WILDCARDS = frozenset({"0.0.0.0", "::", ""})
_UNSET_TIMING = "unset: the profile's value"
_MESH_TLS_KEYS = ("tls_ca", "tls_cert", "tls_key")

if typing.TYPE_CHECKING:
    import ssl


def _timing_seconds(doc: str, *, zero_ok: bool = False) -> Any:
    if zero_ok:
        return _opt(None, doc=doc, expect="a number of seconds, 0 or more", check=lambda v: v >= 0,
                    unset=_UNSET_TIMING)
    return _opt(None, doc=doc, expect=_POSITIVE, check=lambda v: v > 0, unset=_UNSET_TIMING)


def _timing_count(doc: str, *, least: int = 1) -> Any:
    expect = "a positive integer" if least == 1 else f"an integer, {least} or more"
    return _opt(None, doc=doc, expect=expect, check=lambda v: v >= least, unset=_UNSET_TIMING)


def _check_discovery(m: Any) -> None:
    """[mesh] discovery and its keys agree (a value of the wrong type is left to the field checks)."""
    discovery, dns = m.discovery, m.dns
    if discovery == "dns" and dns is None:
        raise ConfigError("mesh.dns", 'is required with discovery = "dns" (the name to resolve)')
    if isinstance(dns, str) and dns and discovery != "dns":
        raise ConfigError("mesh.discovery", f'must be "dns" when dns is set (got {_show(discovery)})')
    interval, expiry = m.heartbeat_interval, m.heartbeat_expiry
    if (isinstance(interval, int | float) and isinstance(expiry, int | float) and interval > 0
            and expiry <= interval):
        raise ConfigError("mesh.heartbeat_expiry", f"must be longer than heartbeat_interval ({interval})")
    if discovery in ("database", "dns") and m.secret is None:
        raise ConfigError(
            "mesh.secret", f"is required when mesh.discovery is {_show(discovery)} (in the file or in "
            f"{MESH_SECRET_ENV})"
        )


@attrs.define(frozen=True, kw_only=True)
class MeshConfig:
    """Node-to-node links: nodes that share a secret form one cluster (membership, the replicated
    session directory and stanza forwarding; docs/mesh/). The mesh runs when `secret` is set (in the
    file or in the environment variable MESHXMPP_MESH_SECRET); without one the node runs alone. The
    timing keys (probe_interval to gossip_to_the_dead_time) override single values of `profile`."""

    bind: str = _opt(
        "0.0.0.0", doc="Address the mesh listener binds to.", expect=_BIND, check=is_bind_address
    )
    port: int = _opt(5701, doc="Mesh port.", expect=_PORT, check=_in_range(0, 65535))
    peers: tuple[str, ...] = _opt(
        (),
        doc='Nodes to join at start (seeds), e.g. ["10.0.0.2:5701"]; one reachable seed is enough.',
        expect='a list of "host:port" strings',
        item_expect='a "host:port" string',
        item_check=_is_peer,
        normalize=_to_tuple,
    )
    secret: str | tuple[str, ...] | None = _opt(
        None,
        doc="Shared secret authenticating mesh links; setting it turns the mesh on (required when peers "
        "is set). A list rotates secrets: the first proves this node, every one is accepted from others. "
        f"Unset in the file: the environment variable {MESH_SECRET_ENV}, if set.",
        expect=_SECRET_EXPECT,
        check=_is_secret,
        normalize=_to_tuple,
        unset=f"unset: {MESH_SECRET_ENV}, else no mesh",
    )
    profile: str = _opt(
        "lan",
        doc='Timing preset of the membership protocol: "lan" (memberlist\'s LAN defaults) or "test" '
        "(fast failure detection for loopback and CI).",
        expect=_choices(MESH_PROFILES),
        check=_one_of(MESH_PROFILES),
    )
    advertise: str | None = _opt(
        None,
        doc="Address other nodes dial to reach this one (behind NAT, or when bind is a wildcard).",
        expect='a "host:port" string',
        check=_is_peer,
        unset="unset: bind and port when bind is a specific address, else worked out at start",
    )
    node_name: str | None = _opt(
        None,
        doc="This node's name in the cluster; unique among the nodes.",
        expect="1 to 64 bytes of printable UTF-8 without whitespace",
        check=is_node_name,
        unset='unset: "<host name>:<port>"',
    )
    join_timeout: float = _opt(
        5.0,
        doc="Seconds a starting node waits for the session directory from a seed before it accepts "
        "clients (0: do not wait).",
        expect="a number of seconds, 0 or more",
        check=lambda v: v >= 0,
    )
    discovery: str = _opt(
        "static",
        doc='How a node finds the others besides peers: "static" (peers only); "database" (each node '
        "writes its address and a heartbeat to a table of the shared database and takes the live rows "
        'as seeds); "dns" (the A/AAAA records of dns, at the mesh port, and its _meshxmpp._tcp SRV '
        "records when dnspython is installed). docs/mesh.md, \"Discovery\".",
        expect=_choices(MESH_DISCOVERY),
        check=_one_of(MESH_DISCOVERY),
    )
    dns: str | None = _opt(
        None,
        doc='discovery = "dns": the name to resolve, e.g. "meshxmpp-peers.example.org".',
        expect="a DNS name",
        check=_non_empty,
        unset='unset (required with discovery = "dns")',
    )
    heartbeat_interval: float = _opt(
        5.0,
        doc='discovery = "database": seconds between heartbeats and reads of the table; "dns": '
        "seconds between lookups.",
        expect=_POSITIVE,
        check=lambda v: v > 0,
    )
    heartbeat_expiry: float = _opt(
        30.0,
        doc='discovery = "database": a row whose last heartbeat is older than this many seconds is '
        "no longer a seed (and is deleted); longer than heartbeat_interval.",
        expect=_POSITIVE,
        check=lambda v: v > 0,
    )
    repair_interval: float | None = _opt(
        None,
        doc="Seconds between anti-entropy rounds of the session directory (digest exchange with one "
        "member).",
        expect=_POSITIVE,
        check=lambda v: v > 0,
        unset='unset: 10.0, or 1.0 with profile "test"',
    )
    forward_window: int = _opt(
        512,
        doc="Stanzas forwarded to one node and not yet acknowledged; more wait in a backlog.",
        expect="a positive integer",
        check=lambda v: v >= 1,
    )
    forward_retransmit: float = _opt(
        1.0,
        doc="Seconds before an unacknowledged forwarded stanza is sent again (doubling while none "
        "is acknowledged).",
        expect=_POSITIVE,
        check=lambda v: v > 0,
    )
    max_frame: int = _opt(
        1048576,
        doc="Largest mesh frame payload, in bytes; bounds the largest stanza that can be forwarded. "
        "Use the same value on every node.",
        expect="an integer between 65536 and 1073741824 (bytes)",
        check=_in_range(65536, 1 << 30),
    )
    dial_timeout: float = _opt(
        3.0, doc="Seconds a connection to another node may take.", expect=_POSITIVE, check=lambda v: v > 0
    )
    handshake_timeout: float = _opt(
        3.0,
        doc="Seconds for the authenticating handshake of a new mesh link (with TLS: both handshakes).",
        expect=_POSITIVE,
        check=lambda v: v > 0,
    )
    tls_ca: str | None = _opt(
        None,
        doc="PEM certificate of the cluster CA. With tls_cert and tls_key, mesh links use mutual TLS: "
        "a peer must present a certificate signed by this CA (system CAs are not trusted, host names "
        "are not checked) and then still prove the secret. docs/mesh/transport.md has a recipe.",
        expect="a file path",
        check=_non_empty,
        unset="unset: no TLS on mesh links (set tls_ca, tls_cert and tls_key, or none)",
    )
    tls_cert: str | None = _opt(
        None,
        doc="PEM certificate chain of this node, signed by tls_ca; shown to peers in both directions.",
        expect="a file path",
        check=_non_empty,
        unset="unset (set tls_ca, tls_cert and tls_key, or none)",
    )
    tls_key: str | None = _opt(
        None,
        doc="PEM private key file for tls_cert.",
        expect="a file path",
        check=_non_empty,
        unset="unset (set tls_ca, tls_cert and tls_key, or none)",
    )
    # Overrides of single `Timing` values (meshxmpp/mesh/_swim_timing.py), same names.
    probe_interval: float | None = _timing_seconds(
        "Seconds between probes of one member (scaled up while this node is unhealthy)."
    )
    probe_timeout: float | None = _timing_seconds(
        "Seconds to wait for a direct probe's ack before asking others; shorter than probe_interval."
    )
    indirect_checks: int | None = _timing_count(
        "Members asked to probe for this node when a direct probe times out.", least=0
    )
    suspicion_mult: int | None = _timing_count(
        "Suspicion timeout = suspicion_mult * max(1, log10(members)) * probe_interval."
    )
    suspicion_max_timeout_mult: int | None = _timing_count(
        "A suspicion starts at this many times the suspicion timeout and shrinks with confirmations."
    )
    gossip_interval: float | None = _timing_seconds("Seconds between gossip rounds.")
    gossip_nodes: int | None = _timing_count("Members gossiped to in each round.")
    retransmit_mult: int | None = _timing_count(
        "Each membership update is gossiped retransmit_mult * ceil(log10(members + 1)) times."
    )
    awareness_max_multiplier: int | None = _timing_count(
        "Local health scales probe_interval by 1 up to this."
    )
    dead_reclaim_time: float | None = _timing_seconds(
        "Seconds after which a dead node's name may come back at another address (0: never).", zero_ok=True
    )
    reconnect_interval: float | None = _timing_seconds(
        "Seconds between attempts to reach dead members and absent seeds again."
    )
    reconnect_timeout: float | None = _timing_seconds(
        "Seconds after its death during which a dead member is still dialled (then forgotten).",
        zero_ok=True,
    )
    push_pull_interval: float | None = _timing_seconds(
        "Seconds between full member-table exchanges with one random member."
    )
    gossip_to_the_dead_time: float | None = _timing_seconds(
        "Seconds a dead member is still gossiped to, so that it can refute its death.", zero_ok=True
    )

    def __attrs_post_init__(self) -> None:
        _check_discovery(self)
        # tls_ca, tls_cert and tls_key: all three or none, and the files exist (as [tls] cert/key).
        # A value of the wrong type is left to the field checks, which name it.
        paths = {name: getattr(self, name) for name in _MESH_TLS_KEYS}
        given = [name for name, p in paths.items() if isinstance(p, str) and p]
        if any(p is not None and not (isinstance(p, str) and p) for p in paths.values()):
            return
        if given and len(given) < len(paths):
            missing = next(name for name in _MESH_TLS_KEYS if name not in given)
            with_ = " and ".join(f"mesh.{name}" for name in given)
            raise ConfigError(
                f"mesh.{missing}",
                f"must be set together with {with_} (tls_ca, tls_cert and tls_key: all or none)",
            )
        for name in given:
            if not Path(paths[name]).is_file():
                raise ConfigError(f"mesh.{name}", f"file not found: {paths[name]}")

    @property
    def enabled(self) -> bool:
        """The mesh runs: a secret is set."""
        return self.secret is not None

    @property
    def tls_enabled(self) -> bool:
        """Mesh links use mutual TLS: tls_ca, tls_cert and tls_key are set."""
        return self.tls_ca is not None

    def ssl_contexts(self) -> tuple[ssl.SSLContext, ssl.SSLContext] | None:
        """(server_context, client_context) for ``MeshTransport(ssl_contexts=...)``; None without TLS.

        Both: TLS 1.2 or later (1.3 when both ends have it), this node's tls_cert and tls_key, and the
        peer's certificate required and verified against tls_ca only (no system CAs). No host name
        check: a node is identified by the name it proves in the HMAC handshake. Reads the files now;
        raises ``ssl.SSLError`` or ``OSError`` when they are not valid PEM or the key does not match.
        """
        import ssl

        if self.tls_ca is None or self.tls_cert is None or self.tls_key is None:
            return None
        contexts = []
        for protocol in (ssl.PROTOCOL_TLS_SERVER, ssl.PROTOCOL_TLS_CLIENT):
            ctx = ssl.SSLContext(protocol)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            ctx.options |= ssl.OP_NO_COMPRESSION
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(cafile=self.tls_ca)
            ctx.load_cert_chain(self.tls_cert, self.tls_key)
            contexts.append(ctx)
        return contexts[0], contexts[1]

    def secrets(self) -> list[bytes]:
        """Every accepted secret as UTF-8, the one this node proves itself with first; [] when unset."""
        if self.secret is None:
            return []
        if isinstance(self.secret, str):
            return [self.secret.encode("utf-8")]
        return [s.encode("utf-8") for s in self.secret]

    def peer_addresses(self) -> list[tuple[str, int]]:
        return [parse_peer(p) for p in self.peers]

    def advertise_address(self) -> tuple[str, int] | None:
        """``advertise``; else (bind, port) when bind is a specific address and the port is fixed;
        else None: the node works it out once it listens."""
        if self.advertise is not None:
            return parse_peer(self.advertise)
        if self.bind in _WILDCARDS or self.port == 0:
            return None
        return self.bind, self.port

    def timing(self) -> Timing:
        """The profile's `Timing` with the keys set here replacing its values; ValueError if invalid."""
        changes = {name: getattr(self, name) for name in _TIMING_FIELDS if getattr(self, name) is not None}
        return dataclasses.replace(PROFILES[self.profile], **changes)

    def repair_every(self) -> float:
        """``repair_interval``, or the profile's: 1.0 with "test", 10.0 otherwise."""
        if self.repair_interval is not None:
            return self.repair_interval
        return 1.0 if self.profile == "test" else 10.0


_TIMING_FIELDS = tuple(f.name for f in dataclasses.fields(Timing))


_BEARER_TOKEN = re.compile(r"[A-Za-z0-9._~+/-]+=*")


def _is_admin_token(v: Any) -> bool:
    # RFC 6750 b64token, so it travels unchanged in "Authorization: Bearer <token>"; a short
    # token is refused because it can be guessed.
    return isinstance(v, str) and len(v) >= 16 and _BEARER_TOKEN.fullmatch(v) is not None


@attrs.define(frozen=True, kw_only=True)
class HTTPConfig:
    """HTTP listener: health checks (`GET /healthz`, `GET /readyz`), metrics (`GET /metrics`) and the
    admin API (`/api/...`, e.g. `GET /api/explain` and `GET /api/cluster`, which `meshxmpp explain`
    and `meshxmpp cluster status` call); docs/operations.md describes them."""

    enabled: bool = _opt(True, doc="Run the HTTP listener.", expect="true or false")
    bind: str = _opt(
        "127.0.0.1", doc="Address the HTTP listener binds to.", expect=_BIND, check=is_bind_address
    )
    port: int = _opt(5280, doc="HTTP port.", expect=_PORT, check=_in_range(0, 65535))
    admin_token: str | None = _opt(
        None,
        doc="Bearer token that /api/* requires (Authorization: Bearer TOKEN), from any address. "
        "Unset: /api/* answers only clients on a loopback address, without a token. "
        "/healthz never needs one.",
        expect='a token of at least 16 characters from A-Z a-z 0-9 - . _ ~ + / (RFC 6750), '
        'e.g. the output of "openssl rand -base64 32"',
        check=_is_admin_token,
        unset="unset (loopback only)",
    )
    ready_timeout: float = _opt(
        2.0,
        doc="Seconds GET /readyz waits for storage to answer before it reports the node not ready (503).",
        expect=_POSITIVE,
        check=lambda v: v > 0,
    )


@attrs.define(frozen=True, kw_only=True)
class ShutdownConfig:
    """Graceful shutdown (SIGTERM, SIGINT): the node stops accepting clients, lets each client's
    stanza in hand finish, ends the sessions, tells the clients (`<system-shutdown/>`, or
    `<see-other-host/>` with `redirect`), flushes their outboxes, leaves the mesh and exits;
    docs/operations.md ("Shutdown and rolling restart")."""

    timeout: float = _opt(
        5.0,
        doc="Seconds a graceful shutdown may take in all; what is not done by then is cut short "
        "(and logged).",
        expect=_POSITIVE,
        check=lambda v: v > 0,
    )
    redirect: bool = _opt(
        False,
        doc="Close client streams with `<see-other-host/>` naming another live node's client address "
        "(from the mesh) instead of `<system-shutdown/>`; without a live node, `<system-shutdown/>`.",
        expect="true or false",
    )
    advertise: str | None = _opt(
        None,
        doc="Client address (host:port) this node publishes in the mesh, which other nodes name in "
        "their `<see-other-host/>` redirects.",
        expect='a "host:port" string',
        check=_is_peer,
        unset="unset: with redirect on, [c2s] bind and port when bind is a specific address; else none",
    )


@attrs.define(frozen=True, kw_only=True)
class Config:
    """The node's identity and where it keeps its files."""

    domain: str = _opt(
        "localhost",
        doc="The domain this node serves: users are user@domain.",
        expect=_DOMAIN,
        check=is_domain,
        normalize=_normalize_domain,
    )
    data_dir: str = _opt(
        "meshxmpp-data",
        doc="Directory for the database and the development certificate; relative paths are "
        "relative to the working directory.",
        expect="a directory path",
        check=_non_empty,
    )
    log_level: str = _opt(
        "info",
        doc="Least severe log records written to stderr.",
        expect=_choices(LOG_LEVELS),
        check=_one_of(LOG_LEVELS),
        normalize=_normalize_lower,
    )
    c2s: C2SConfig = _table(C2SConfig, "Client connections.")
    tls: TLSConfig = _table(TLSConfig, "TLS certificate.")
    storage: StorageConfig = _table(StorageConfig, "Storage backend.")
    offline: OfflineConfig = _table(OfflineConfig, "Offline messages.")
    routing: RoutingConfig = _table(RoutingConfig, "Routing policy.")
    muc: MUCConfig = _table(MUCConfig, "Multi-user chat.")
    components: ComponentsConfig = _table(ComponentsConfig, "External components.")
    mesh: MeshConfig = _table(MeshConfig, "Mesh links.")
    http: HTTPConfig = _table(HTTPConfig, "HTTP API.")
    shutdown: ShutdownConfig = _table(ShutdownConfig, "Graceful shutdown.")

    def __attrs_post_init__(self) -> None:
        _validate(self, "")
        _cross_checks(self)

    def routing_dict(self) -> dict[str, Any]:
        """``self.routing.routing_dict()``: what the routing policy engine reads."""
        return self.routing.routing_dict()

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)

    @property
    def storage_path(self) -> Path:
        """The SQLite file: ``storage.path``, or ``<data_dir>/meshxmpp.sqlite3``."""
        if self.storage.path is not None:
            return Path(self.storage.path)
        return Path(self.data_dir) / "meshxmpp.sqlite3"


_CLASSES: tuple[type, ...] = (
    C2SConfig,
    TLSConfig,
    LitestreamConfig,
    StorageConfig,
    OfflineConfig,
    SenderRule,
    RoutingConfig,
    MUCConfig,
    ComponentService,
    ComponentsConfig,
    MeshConfig,
    HTTPConfig,
    ShutdownConfig,
    Config,
)
for _cls in _CLASSES:
    attrs.resolve_types(_cls)


def _key(field: attrs.Attribute[Any]) -> str:
    return typing.cast(str, field.metadata.get("key") or field.name)


def _join(path: str, part: str | int) -> str:
    if isinstance(part, int):
        return f"{path}[{part}]"
    return f"{path}.{part}" if path else part


# ---------------------------------------------------------------------------------------------
# validation of a built tree


def _validate(obj: Any, path: str) -> None:
    for field in attrs.fields(type(obj)):
        value = getattr(obj, field.name)
        key = _join(path, _key(field))
        if attrs.has(type(value)):
            _validate(value, key)
            continue
        if isinstance(value, tuple) and value and attrs.has(type(value[0])):
            for i, item in enumerate(value):
                _validate(item, _join(key, i))
            continue
        md = field.metadata
        if value is None:
            if md.get("required"):
                raise ConfigError(key, "is required")
            continue
        check = md.get("check")
        if not _type_ok(value, field.type) or (check is not None and not _check(check, value)):
            raise ConfigError(key, f"must be {md['expect']} (got {_show(value)})")
        item_check = md.get("item_check")
        if item_check is not None:
            for i, item in enumerate(value):
                if not _check(item_check, item):
                    raise ConfigError(_join(key, i), f"must be {md['item_expect']} (got {_show(item)})")


def _type_ok(value: Any, t: Any) -> bool:
    """For trees built in code (evolve, direct construction), which cattrs has not checked."""
    if t is bool:
        return isinstance(value, bool)
    if t is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if t is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if t is str:
        return isinstance(value, str)
    args = typing.get_args(t)
    if type(None) in args:
        return value is None or any(_type_ok(value, a) for a in args if a is not type(None))
    if _is_homogeneous_tuple(t):
        return isinstance(value, tuple) and all(_type_ok(v, args[0]) for v in value)
    if isinstance(t, type):
        return isinstance(value, t)
    return True


def _check(check: Callable[[Any], bool], value: Any) -> bool:
    try:
        return bool(check(value))
    except (TypeError, ValueError):
        return False


def _cross_checks(c: Config) -> None:
    if (c.tls.cert is None) != (c.tls.key is None):
        missing, given = ("tls.key", "tls.cert") if c.tls.key is None else ("tls.cert", "tls.key")
        raise ConfigError(missing, f"must be set together with {given} (both or neither)")
    for name in ("cert", "key"):
        p = getattr(c.tls, name)
        if p is not None and not Path(p).is_file():
            raise ConfigError(f"tls.{name}", f"file not found: {p}")
    if c.data_path.exists() and not c.data_path.is_dir():
        raise ConfigError("data_dir", f"exists and is not a directory: {c.data_dir}")
    if c.storage.backend == "postgres" and c.storage.dsn is None:
        raise ConfigError("storage.dsn", 'is required when storage.backend = "postgres"')
    if c.c2s.direct_tls_port is not None and c.c2s.direct_tls_port == c.c2s.port and c.c2s.port != 0:
        raise ConfigError("c2s.direct_tls_port", f"must differ from c2s.port ({c.c2s.port})")
    r = c.routing
    implied = (
        "all-non-negative" if r.really_all_resources else "top-priority-all" if r.all_resources else None
    )
    if implied is not None and r.policy != implied:
        alias = REALLY_ALL_RESOURCES_KEY if r.really_all_resources else ALL_RESOURCES_KEY
        raise ConfigError(
            "routing.policy",
            f'conflicts with {alias} = true, which means "{implied}" (got {_show(r.policy)})',
        )
    if c.muc.domain is not None and c.muc.domain == c.domain:
        raise ConfigError("muc.domain", f"must differ from domain ({c.domain})")
    seen: set[str] = {c.domain} | ({c.muc.domain} if c.muc.domain else set())
    for i, svc in enumerate(c.components.service):
        if svc.domain in seen:
            raise ConfigError(
                f"components.service[{i}].domain",
                f"must differ from domain, muc.domain and other components (got {_show(svc.domain)})",
            )
        seen.add(svc.domain)
    if c.mesh.peers and c.mesh.secret is None:
        raise ConfigError(
            "mesh.secret", f"is required when mesh.peers is set (in the file or in {MESH_SECRET_ENV})"
        )
    _check_timing(c.mesh)


def _check_timing(m: MeshConfig) -> None:
    """The profile with the overrides must be a valid `Timing` (e.g. probe_timeout < probe_interval)."""
    try:
        m.timing()
    except ValueError as exc:
        text = str(exc).removeprefix("mesh timing ")
        name, _, why = text.partition(" ")
        if name not in _TIMING_FIELDS:
            raise ConfigError("mesh.profile", text) from None
        if name == "probe_timeout" and "probe_interval" in why:
            base = PROFILES[m.profile]
            timeout = m.probe_timeout if m.probe_timeout is not None else base.probe_timeout
            interval = m.probe_interval if m.probe_interval is not None else base.probe_interval
            # Name the key the operator wrote: the timeout if set, else the interval that undercut it.
            profile = f" in profile {_show(m.profile)}"
            if m.probe_timeout is None:
                raise ConfigError(
                    "mesh.probe_interval",
                    f"must be longer than probe_timeout, {_show(timeout)}{profile} (got {_show(interval)})",
                ) from None
            source = "" if m.probe_interval is not None else profile
            raise ConfigError(
                "mesh.probe_timeout",
                f"must be shorter than probe_interval, {_show(interval)}{source} (got {_show(timeout)})",
            ) from None
        raise ConfigError(f"mesh.{name}", why) from None


# ---------------------------------------------------------------------------------------------
# structuring with cattrs


class _TypeMismatch(Exception):
    def __init__(self, value: Any, expect: str | None = None) -> None:
        super().__init__(value)
        self.value = value
        self.expect = expect


def _strict_int(v: Any, _t: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise _TypeMismatch(v)
    return v


def _strict_float(v: Any, _t: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise _TypeMismatch(v)
    return float(v)


def _strict_str(v: Any, _t: Any) -> str:
    if not isinstance(v, str):
        raise _TypeMismatch(v)
    return v


def _strict_bool(v: Any, _t: Any) -> bool:
    if not isinstance(v, bool):
        raise _TypeMismatch(v)
    return v


def _is_homogeneous_tuple(t: Any) -> bool:
    args = typing.get_args(t)
    return typing.get_origin(t) is tuple and len(args) == 2 and args[1] is Ellipsis


def _make_converter() -> cattrs.Converter:
    conv = cattrs.Converter(forbid_extra_keys=True, detailed_validation=True)
    conv.register_structure_hook(int, _strict_int)
    conv.register_structure_hook(float, _strict_float)
    conv.register_structure_hook(str, _strict_str)
    conv.register_structure_hook(bool, _strict_bool)

    def structure_tuple(v: Any, t: Any) -> tuple[Any, ...]:
        if not isinstance(v, list | tuple):
            raise _TypeMismatch(v)
        item_type: Any = list[typing.get_args(t)[0]]  # type: ignore[misc]
        return tuple(conv.structure(list(v), item_type))

    conv.register_structure_hook_func(_is_homogeneous_tuple, structure_tuple)

    def structure_secret(v: Any, _t: Any) -> str | tuple[str, ...] | None:
        # mesh.secret: a string, or a list of them (rotation); the check reports empty ones.
        if v is None or isinstance(v, str):
            return v
        if isinstance(v, list | tuple) and all(isinstance(s, str) for s in v):
            return tuple(v)
        raise _TypeMismatch(v)

    conv.register_structure_hook_func(lambda t: t == _SECRET_TYPE, structure_secret)

    for cls in _CLASSES:
        renames: dict[str, Any] = {
            f.name: override(rename=f.metadata["key"]) for f in attrs.fields(cls) if f.metadata.get("key")
        }
        inner: Callable[[Any, Any], Any] = make_dict_structure_fn(
            cls, conv, _cattrs_forbid_extra_keys=True, **renames
        )

        def hook(v: Any, t: Any, inner: Callable[[Any, Any], Any] = inner) -> Any:
            if not isinstance(v, Mapping):
                raise _TypeMismatch(v, "a table")
            return inner(v, t)

        conv.register_structure_hook(cls, hook)
    return conv


@functools.cache
def _converter() -> cattrs.Converter:
    # Built on first use: generating the hooks costs tens of milliseconds at every CLI start.
    return _make_converter()


def _first_error(
    exc: BaseException, path: str, field: attrs.Attribute[Any] | None, item: bool = False
) -> ConfigError:
    """Turn the first leaf of a cattrs error tree into a ConfigError naming the key."""
    if isinstance(exc, ConfigError):
        return exc
    if isinstance(exc, ClassValidationError):
        with_notes, without = exc.group_exceptions()
        fields = attrs.fields_dict(exc.cl)
        # Report in the order the fields are declared; errors from __init__ (no note) come last.
        for sub, note in with_notes:
            f = fields[note.name]
            return _first_error(sub, _join(path, _key(f)), f)
        for sub in without:
            return _first_error(sub, path, None)
    if isinstance(exc, IterableValidationError):
        with_inotes, without_i = exc.group_exceptions()
        for sub, inote in with_inotes:
            return _first_error(sub, _join(path, inote.index), field, item=True)
        for sub in without_i:
            return _first_error(sub, path, field, item=True)
    if isinstance(exc, ForbiddenExtraKeysError):
        valid = [_key(f) for f in attrs.fields(exc.cl)]
        extra = sorted(exc.extra_fields)[0]
        hint = difflib.get_close_matches(extra, valid, n=1)
        more = f'; did you mean "{hint[0]}"?' if hint else f" (valid keys: {', '.join(valid)})"
        return ConfigError(_join(path, extra), "unknown key" + more)
    if isinstance(exc, _TypeMismatch):
        expect = exc.expect
        if expect is None and field is not None:
            expect = field.metadata.get("item_expect" if item else "expect")
        return ConfigError(path, f"must be {expect or 'a different type'} (got {_show(exc.value)})")
    if isinstance(exc, KeyError):
        return ConfigError(path, "is required")
    return ConfigError(path, str(exc) or type(exc).__name__)


# ---------------------------------------------------------------------------------------------
# loading


def _expand_dotted(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """{"c2s.port": 1} -> {"c2s": {"port": 1}}."""
    out: dict[str, Any] = {}
    for dotted, value in overrides.items():
        *parents, last = dotted.split(".")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        value = _expand_dotted(value) if isinstance(value, Mapping) else value
        if isinstance(value, dict) and isinstance(node.get(last), dict):
            value = _merge(node[last], value)
        node[last] = value
    return out


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = _merge(dict(out[k]), v)
        else:
            out[k] = v
    return out


def _prepare_routing(raw: dict[str, Any]) -> None:
    """Openfire aliases: accept the dotted form, map them onto ``policy``."""
    routing = raw.get("routing")
    if not isinstance(routing, dict):
        return
    routing = raw["routing"] = dict(routing)
    nested = routing.get("route")
    if isinstance(nested, dict):
        # `route.all-resources = true` (unquoted) is a TOML dotted key: {"route": {"all-resources": true}}.
        del routing["route"]
        for k, v in nested.items():
            full = f"route.{k}"
            if full in routing:
                raise ConfigError(f"routing.{full}", "given twice")
            routing[full] = v
    really = routing.get(REALLY_ALL_RESOURCES_KEY)
    allres = routing.get(ALL_RESOURCES_KEY)
    implied = "all-non-negative" if really is True else "top-priority-all" if allres is True else None
    if implied is None:
        return
    alias = REALLY_ALL_RESOURCES_KEY if really is True else ALL_RESOURCES_KEY
    if "policy" in routing and routing["policy"] != implied:
        raise ConfigError(
            "routing.policy",
            f'conflicts with {alias} = true, which means "{implied}" (got {_show(routing["policy"])})',
        )
    routing["policy"] = implied


def config_from_dict(raw: Mapping[str, Any]) -> Config:
    """Structure plain data (as TOML gives it) into a validated Config."""
    data = dict(raw)
    _prepare_routing(data)
    try:
        return _converter().structure(data, Config)
    except ConfigError:
        raise
    except Exception as exc:
        raise _first_error(exc, "", None) from None


def load_config(path: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> Config:
    """Read ``path`` (TOML; None: no file, all defaults), apply ``overrides`` and validate.

    ``overrides`` is nested ({"c2s": {"port": 0}}) or dotted ({"c2s.port": 0}) and wins over the file.
    """
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as f:
                raw = tomllib.load(f)
        except OSError as exc:
            raise ConfigError("", f"cannot read {path}: {exc.strerror or exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError("", f"{path} is not valid TOML: {exc}") from None
    if overrides:
        raw = _merge(raw, _expand_dotted(overrides))
    _secret_from_environment(raw)
    return config_from_dict(raw)


def _secret_from_environment(raw: dict[str, Any]) -> None:
    """``mesh.secret`` from MESHXMPP_MESH_SECRET when neither the file nor an override sets it."""
    secret = os.environ.get(MESH_SECRET_ENV)
    if not secret:
        return
    mesh = raw.get("mesh", {})
    if not isinstance(mesh, Mapping):
        return  # left for the converter to reject as "mesh: must be a table"
    if mesh.get("secret") is None:
        raw["mesh"] = {**mesh, "secret": secret}


def evolve(config: Config, **changes: Any) -> Config:
    """A copy with changes, validated. A dict value changes fields of that table:
    ``evolve(cfg, domain="example.org", c2s={"port": 0}, storage={"backend": "memory"})``."""
    resolved: dict[str, Any] = {}
    for name, value in changes.items():
        current = getattr(config, name)
        if isinstance(value, Mapping) and attrs.has(type(current)):
            value = attrs.evolve(current, **value)
        resolved[name] = value
    return attrs.evolve(config, **resolved)


# ---------------------------------------------------------------------------------------------
# reference documentation


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else str(value)
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return str(value)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _sections(cls: type, prefix: str, array: bool = False) -> list[tuple[str, type, bool]]:
    out = [(prefix, cls, array)]
    for f in attrs.fields(cls):
        if attrs.has(f.type):
            out += _sections(f.type, _join(prefix, _key(f)))
        elif _is_homogeneous_tuple(f.type) and attrs.has(typing.get_args(f.type)[0]):
            out += _sections(typing.get_args(f.type)[0], _join(prefix, _key(f)), array=True)
    return out


def reference_markdown() -> str:
    """The configuration reference (docs/configuration.md embeds this verbatim; a test checks it)."""
    lines: list[str] = []
    for prefix, cls, array in _sections(Config, ""):
        if not prefix:
            heading = "Top level"
        elif array:
            heading = f"`[[{prefix}]]` (list of tables)"
        else:
            heading = f"`[{prefix}]`"
        lines += [f"### {heading}", "", _cell(" ".join((cls.__doc__ or "").split())), ""]
        lines += ["| Key | Value | Default | Meaning |", "|---|---|---|---|"]
        for f in attrs.fields(cls):
            if attrs.has(f.type):
                continue  # a table of its own, documented in its section
            md = f.metadata
            if md.get("required"):
                default = "required"
            elif f.default is None:
                default = md.get("unset") or "unset"
            else:
                default = f"`{_toml_value(f.default)}`"
            name = _key(f)
            key = f'`"{name}"`' if "." in name else f"`{name}`"
            lines.append(f"| {key} | {_cell(md['expect'])} | {_cell(default)} | {_cell(md['doc'])} |")
        lines.append("")
    return "\n".join(lines)
