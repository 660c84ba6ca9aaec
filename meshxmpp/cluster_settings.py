"""Cluster settings: the options that must be equal on every node, kept in the shared database.

``meshxmpp config set KEY VALUE`` writes a row of the ``cluster_settings`` table (`storage.cluster`);
every running node polls the table (`POLL_INTERVAL`) and applies what changed, so no restart is needed;
a starting node applies the rows before its first client connects. A row overrides the file's value; a
key with no row keeps the file's value (``config unset KEY`` deletes the row: the file's value again).

The keys (`KEYS`) and what applying one does:

- ``routing.*`` (the policy for messages to a bare JID and the RFC 6121 choices): the router's
  ``policy_config`` is rebuilt with ``PolicyConfig.from_routing_config``, so the next message follows it;
- ``offline.delivery``: the offline feature's mode (first-resource / all-resources) is switched, with
  its ``session/end`` hook; ``offline.max_per_user`` is read from the node's Config at each store;
- ``muc.history_size``, ``muc.default_persistent``: the defaults of rooms created from now on.

In every case ``ctx.config`` becomes the file's Config with the rows applied (``config.evolve``, so a
row is validated exactly as the file is: a row that fails, say written by a newer release, is logged
and skipped, never applied halfway).
"""

from __future__ import annotations

import json
import logging
import typing
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import attrs
import trio

from meshxmpp.config import Config, ConfigError, evolve
from meshxmpp.storage.cluster import ClusterStore, open_cluster_store

if TYPE_CHECKING:
    from meshxmpp.context import NodeContext

__all__ = ["KEYS", "POLL_INTERVAL", "SettingsWatcher", "apply_settings", "parse_value", "validate"]

log = logging.getLogger("meshxmpp.cluster")

#: Seconds between two reads of the settings table by a running node.
POLL_INTERVAL = 1.0

#: Keys that may be set for the whole cluster.
KEYS: tuple[str, ...] = (
    "routing.policy",
    "routing.all_negative",
    "routing.no_available",
    "routing.absent_normal",
    "routing.absent_headline",
    "routing.absent_groupchat",
    "routing.unknown_user",
    "routing.store_chat_states",
    "offline.delivery",
    "offline.max_per_user",
    "muc.history_size",
    "muc.default_persistent",
)


def _field(key: str) -> attrs.Attribute[Any]:
    section, _, name = key.partition(".")
    cls = attrs.fields_dict(Config)[section].type
    assert isinstance(cls, type)
    return attrs.fields_dict(cls)[name]


def parse_value(key: str, text: str) -> Any:
    """The command line's text as the type ``key`` holds (left as text when it does not parse, so
    validation rejects it naming the key)."""
    if key not in KEYS:
        raise ConfigError(key, "is not a cluster setting; one of: " + ", ".join(KEYS))
    kind = _field(key).type
    if kind in (bool, "bool"):
        low = text.strip().lower()
        return {"true": True, "false": False}.get(low, text)
    if kind in (int, "int"):
        try:
            return int(text.strip())
        except ValueError:
            return text
    if kind in (float, "float"):
        try:
            return float(text.strip())
        except ValueError:
            return text
    return text


def _changes(values: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for key, value in values.items():
        section, _, name = key.partition(".")
        out.setdefault(section, {})[name] = value
    return out


def validate(config: Config, key: str, value: Any) -> Config:
    """``config`` with ``key`` set to ``value``, checked as the file is; ConfigError names the key."""
    if key not in KEYS:
        raise ConfigError(key, "is not a cluster setting; one of: " + ", ".join(KEYS))
    try:
        return evolve(config, **_changes({key: value}))
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:  # a value attrs itself refused
        raise ConfigError(key, str(exc)) from None


def effective(base: Config, rows: Mapping[str, str]) -> tuple[Config, dict[str, Any], list[str]]:
    """The file's Config with the rows applied, one at a time (a bad row is skipped): (config, the
    values applied, one message per skipped row)."""
    config, applied, skipped = base, {}, []
    for key in sorted(rows):
        try:
            value = json.loads(rows[key])
            config = validate(config, key, value)
        except (ConfigError, ValueError) as exc:
            skipped.append(f"{key}: {exc}")
            continue
        applied[key] = value
    return config, applied, skipped


def apply_settings(ctx: NodeContext, config: Config) -> None:
    """Make the running node follow ``config`` for the cluster keys (see the module docstring)."""
    from meshxmpp.im.offline import ALL_RESOURCES, Offline
    from meshxmpp.muc.service import service_of
    from meshxmpp.routing.policy import PolicyConfig

    old = ctx.config
    ctx.config = config
    if config.routing != old.routing:
        ctx.router.policy_config = PolicyConfig.from_routing_config(config.routing_dict())
    if config.offline.delivery != old.offline.delivery:
        feature = _find_hooked(ctx, "message/offline", Offline)
        if feature is not None:
            all_resources = config.offline.delivery == ALL_RESOURCES
            if all_resources and not feature.all_resources:
                ctx.hub.hook("session/end", feature.session_end)
            elif feature.all_resources and not all_resources:
                # Hub.unhook compares by identity: the bound method object it holds, not a new one.
                for _, _, handler in list(ctx.hub._handlers.get("session/end", ())):
                    if getattr(handler, "__self__", None) is feature:
                        ctx.hub.unhook("session/end", handler)
            feature.all_resources = all_resources
    if config.muc != old.muc:
        muc = service_of(ctx)
        if muc is not None:
            muc.instant.history_size = config.muc.history_size
            muc.instant.persistent = config.muc.default_persistent


T = typing.TypeVar("T")


def _find_hooked(ctx: NodeContext, event: str, cls: type[T]) -> T | None:
    """The feature object of class ``cls`` whose bound method handles ``event``. im.offline keeps its
    delivery mode in its `Offline` object (returned by its register(), which im.register_all drops),
    so this is how the running one is found; a `set_delivery` there would make this unnecessary."""
    for _, _, handler in ctx.hub._handlers.get(event, ()):
        owner = getattr(handler, "__self__", None)
        if isinstance(owner, cls):
            return owner
    return None


class SettingsWatcher:
    """Applies the cluster settings at start and whenever the table changes. Started by `Node.run`
    (``await nursery.start(SettingsWatcher(ctx).run)``) before the mesh and the client listeners."""

    def __init__(self, ctx: NodeContext, *, store: ClusterStore | None = None,
                 poll_interval: float = POLL_INTERVAL) -> None:
        self.ctx = ctx
        self.base = ctx.config  # the file's values: what a deleted row falls back to
        self.store = store if store is not None else open_cluster_store(ctx.config, ctx.storage)
        self.poll_interval = poll_interval
        self.applied: dict[str, Any] = {}
        self.version = 0  # bumps at every change applied (tests wait on it)
        self._rows: dict[str, str] | None = None
        self._changed = trio.Event()

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        await self.store.open()
        try:
            await self.refresh()
            task_status.started(self)
            while True:
                await trio.sleep(self.poll_interval)
                try:
                    await self.refresh()
                except Exception as exc:  # the database may be away for a while
                    log.warning("cluster settings: cannot read the table: %s", exc)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                await self.store.close()

    async def refresh(self) -> bool:
        """Read the table; apply it if it changed. True when something was applied."""
        rows = await self.store.settings()
        if rows == self._rows:
            return False
        self._rows = rows
        config, applied, skipped = effective(self.base, rows)
        for message in skipped:
            log.error("cluster settings: ignoring %s", message)
        if applied == self.applied and config == self.ctx.config:
            return False
        changed = sorted(k for k in set(applied) | set(self.applied) if applied.get(k) != self.applied.get(k))
        apply_settings(self.ctx, config)
        self.applied = applied
        self.version += 1
        self._changed.set()
        self._changed = trio.Event()
        if changed:
            log.info("cluster settings: %s", ", ".join(
                f"{k} = {json.dumps(applied[k])}" if k in applied else f"{k} back to the file's value"
                for k in changed))
        return True

    async def wait_changed(self) -> None:
        """Wait for the next change to be applied."""
        await self._changed.wait()
