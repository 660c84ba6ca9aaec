"""How a node finds the other nodes besides ``[mesh] peers`` (docs/mesh.md, "Discovery").

``[mesh] discovery``:

- ``"static"``: the peers only (no object here: `make_discovery` returns None);
- ``"database"`` (`DatabaseDiscovery`): the node writes (name, mesh address, epoch, mesh protocol
  version, heartbeat time) to the ``mesh_heartbeats`` table of its database every
  ``heartbeat_interval`` and takes as seeds the rows younger than ``heartbeat_expiry`` (its own
  excluded); rows that appear later are handed to `MeshCore.add_seeds`. A node that stops
  heartbeating drops out of the table after the expiry (SWIM has declared it dead long before). At
  start, a live row that speaks another mesh protocol version makes the node refuse to join
  (`ProtocolMismatch`, with a log line naming the nodes and versions).
- ``"dns"`` (`DnsDiscovery`): the A/AAAA records of ``[mesh] dns`` at this node's mesh port, and the SRV
  records of ``_meshxmpp._tcp.<dns>`` (target and port) when dnspython is installed (the standard
  library has no SRV lookup; without it SRV is skipped), at start and every ``heartbeat_interval``.

Static peers always count as well. The Trio side is here; what to do with an address is the sans-IO
core's (`MeshCore.add_seeds`: a push-pull and a directory digest ask, unless it is already a member).
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import trio

from meshxmpp.mesh.wire import PROTOCOL_VERSION
from meshxmpp.storage.cluster import ClusterStore, Heartbeat, open_cluster_store

if TYPE_CHECKING:
    from meshxmpp.config import MeshConfig

__all__ = ["SRV_PREFIX", "DatabaseDiscovery", "Discovery", "DnsDiscovery", "ProtocolMismatch", "make_discovery"]

log = logging.getLogger("meshxmpp.mesh")

Addr = tuple[str, int]
#: SRV records looked up for ``[mesh] dns = NAME``: ``_meshxmpp._tcp.NAME``.
SRV_PREFIX = "_meshxmpp._tcp."


class ProtocolMismatch(OSError):
    """The live nodes of the cluster speak a mesh protocol version this node cannot. An OSError, as a
    port in use is: ``meshxmpp serve`` reports it in one line ("cannot start: ...") and exits 1."""


class Discovery:
    """``start(me)`` -> the seeds to begin with; ``run(add_seeds)`` finds more until cancelled;
    ``leave()`` on a graceful shutdown."""

    async def start(self, me: Addr) -> list[Addr]:
        raise NotImplementedError

    async def run(self, add_seeds: Callable[[list[Addr]], object]) -> None:
        raise NotImplementedError

    async def leave(self) -> None:
        await trio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


def make_discovery(cfg: MeshConfig, *, config: Any, storage: Any, name: str, epoch: int) -> Discovery | None:
    """The discovery ``[mesh] discovery`` names (None for "static"). ``config``: the node's whole
    Config and ``storage`` its storage object (the heartbeat table lives in the same database)."""
    if cfg.discovery == "database":
        return DatabaseDiscovery(open_cluster_store(config, storage), name=name, epoch=epoch,
                                 interval=cfg.heartbeat_interval, expiry=cfg.heartbeat_expiry)
    if cfg.discovery == "dns":
        assert cfg.dns is not None  # config.py requires it
        return DnsDiscovery(cfg.dns, interval=cfg.heartbeat_interval)
    return None


class DatabaseDiscovery(Discovery):
    def __init__(self, store: ClusterStore, *, name: str, epoch: int, interval: float, expiry: float,
                 protocol: int = PROTOCOL_VERSION) -> None:
        self.store = store
        self.name = name
        self.epoch = epoch
        self.interval = interval
        self.expiry = expiry
        self.protocol = protocol
        self._row: Heartbeat | None = None
        self._opened = False
        self._warned: set[tuple[str, int]] = set()

    async def start(self, me: Addr) -> list[Addr]:
        await self.store.open()
        self._opened = True
        self._row = Heartbeat(self.name, me[0], int(me[1]), self.epoch, self.protocol)
        others = await self._others()
        foreign = [r for r in others if r.protocol != self.protocol]
        if foreign:
            which = ", ".join(f"{r.name} ({r.host}:{r.port}) speaks version {r.protocol}" for r in foreign)
            message = (f"mesh {self.name}: refusing to join: this node speaks mesh protocol version "
                       f"{self.protocol} and the cluster's live nodes do not: {which}. Run the same "
                       "meshxmpp release on every node (or upgrade them all), then start this node again.")
            log.error("%s", message)
            raise ProtocolMismatch(message)
        await self.store.heartbeat(self._row)
        seeds = [(r.host, r.port) for r in others]
        log.info("mesh %s: database discovery: %d live node(s)%s", self.name, len(seeds),
                 ": " + ", ".join(r.name for r in others) if others else "")
        return seeds

    async def _others(self) -> list[Heartbeat]:
        return [r for r in await self.store.live(self.expiry) if r.name != self.name]

    async def run(self, add_seeds: Callable[[list[Addr]], object]) -> None:
        assert self._row is not None, "start() first"
        while True:
            await trio.sleep(self.interval)
            try:
                await self.store.heartbeat(self._row)
                others = await self._others()
            except Exception as exc:  # the database may be away for a while: keep the mesh going
                log.warning("mesh %s: database discovery: %s", self.name, exc)
                continue
            seeds = []
            for r in others:
                if r.protocol == self.protocol:
                    seeds.append((r.host, r.port))
                elif (r.name, r.protocol) not in self._warned:
                    self._warned.add((r.name, r.protocol))
                    log.warning("mesh %s: ignoring node %s (%s:%d): it speaks mesh protocol version %d, "
                                "this node %d", self.name, r.name, r.host, r.port, r.protocol, self.protocol)
            if seeds:
                add_seeds(seeds)

    async def leave(self) -> None:
        """A graceful shutdown: take our row out now rather than let it expire."""
        if self._opened:
            await self.store.remove(self.name)

    async def aclose(self) -> None:
        if self._opened:
            self._opened = False
            await self.store.close()


class DnsDiscovery(Discovery):
    def __init__(self, name: str, *, interval: float) -> None:
        self.dns = name
        self.interval = interval
        self._me: Addr = ("", 0)
        self._srv_warned = False

    async def start(self, me: Addr) -> list[Addr]:
        self._me = (me[0], int(me[1]))
        seeds = await self.lookup()
        log.info("mesh: dns discovery of %s: %d address(es)", self.dns, len(seeds))
        return seeds

    async def run(self, add_seeds: Callable[[list[Addr]], object]) -> None:
        while True:
            await trio.sleep(self.interval)
            seeds = await self.lookup()
            if seeds:
                add_seeds(seeds)

    async def lookup(self) -> list[Addr]:
        """The name's A/AAAA addresses at our mesh port, then its SRV targets' addresses at their ports,
        this node excluded. A failed lookup gives nothing (logged at debug: DNS may lag)."""
        port = self._me[1]
        targets: list[Addr] = [(self.dns, port)] + await self._srv()
        out: list[Addr] = []
        for host, p in targets:
            try:
                infos = await trio.socket.getaddrinfo(host, p, type=socket.SOCK_STREAM)
            except OSError as exc:
                log.debug("mesh: dns discovery: %s: %s", host, exc)
                continue
            for info in infos:
                addr = (str(info[4][0]), p)
                if not self._is_me(addr) and addr not in out:
                    out.append(addr)
        return out

    async def _srv(self) -> list[Addr]:
        try:
            import dns.resolver  # type: ignore[import-not-found,unused-ignore]
        except ImportError:
            if not self._srv_warned:
                self._srv_warned = True
                log.info("mesh: dns discovery: dnspython is not installed, so SRV records of %s%s are not "
                         "looked up (A/AAAA only)", SRV_PREFIX, self.dns)
            return []

        def query() -> list[Addr]:
            try:
                answer = dns.resolver.resolve(SRV_PREFIX + self.dns, "SRV", lifetime=5.0)
            except Exception:  # NXDOMAIN, no answer, timeout: no SRV records
                return []
            return [(str(r.target).rstrip("."), int(r.port)) for r in answer]

        found: list[Addr] = await trio.to_thread.run_sync(query, abandon_on_cancel=True)
        return found

    def _is_me(self, addr: Addr) -> bool:
        return addr[1] == self._me[1] and (addr[0] == self._me[0] or (_is_local(addr[0]) and _is_local(self._me[0])))


def _is_local(ip: str) -> bool:
    try:
        a = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return a.is_loopback or a.is_unspecified
