"""The mesh's Trio glue: runs `MeshTransport` and `MeshCore` for a node and ties them to its router.

Everything the mesh decides lives in the sans-IO `mesh.core` (membership, directory, forwarding); this
module only moves bytes and time in and out of it and acts on its events:

- frames from the transport go to ``core.on_frame``; ``core.drain_outgoing`` goes to ``transport.send``
  (a membership packet that cannot be queued is reported back with ``on_send_failed``);
- one timer task sleeps until ``core.next_deadline()`` or until local work is queued (`_kick`), then
  pumps: so the stanzas one read of a client produces leave in as few frames as possible;
- the node's sessions become directory records at bind, on every presence, carbons or roster-interest
  change (`session_changed`, called by the router) and are removed when they end;
- a stanza forwarded to us is delivered to its session at once when it is here (and acked); anything
  that needs the router's awaitable paths (the session is gone, a re-route after a death) goes through
  one worker task, in order, and is acked once the router has taken responsibility for it;
- `SessionsLost` with ``announce`` sends the lost resources' unavailable presence (im.presence),
  `ConflictLost` closes the losing local session with <conflict/>.

The node starts the service before its client listeners: ``run`` reports started once a seed has
answered with the cluster's directory (or ``[mesh] join_timeout`` passed).
"""

from __future__ import annotations

import contextvars
import inspect
import ipaddress
import logging
import math
import random
import secrets
import socket
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

import trio

from meshxmpp.jid import JID, InvalidJID
from meshxmpp.mesh._records import SessionRecord
from meshxmpp.mesh.core import (
    ConflictLost,
    Inbound,
    Joined,
    MemberChanged,
    MeshCore,
    Reroute,
    SessionsBack,
    SessionsLost,
)
from meshxmpp.mesh.discovery import Discovery, make_discovery
from meshxmpp.mesh.transport import ConnectionClosed, MeshTransport
from meshxmpp.mesh.wire import Kind
from meshxmpp.xml import ns
from meshxmpp.xml.errors import StreamError
from meshxmpp.xml.events import StanzaReceived
from meshxmpp.xml.serialize import stream_header, to_bytes, to_str
from meshxmpp.xml.stream import XmlStream

if TYPE_CHECKING:
    from meshxmpp.c2s.session import Session
    from meshxmpp.context import NodeContext
    from meshxmpp.xml.element import Element

log = logging.getLogger("meshxmpp.mesh")

#: Hops of the stanza being routed again by the worker (so a forward from there counts one more hop).
_HOPS: contextvars.ContextVar[int] = contextvars.ContextVar("mesh_hops", default=0)
_CARBON_NS = ns.CARBONS
_WILDCARDS = frozenset({"", "0.0.0.0", "::"})
#: Domain of the directory records that describe nodes rather than sessions (never a real domain).
_NODE_INFO_DOMAIN = "meshxmpp.invalid"
#: Resource of the directory record that says a node has a connection of an external component.
COMPONENT_RESOURCE = "component"
#: How long a leaving node waits for its forwarded stanzas to be acked before it says goodbye.
DRAIN_TIMEOUT = 3.0


def default_node_name(port: int) -> str:
    host = socket.gethostname() or "node"
    return f"{host}:{port}" if port else f"{host}-{secrets.token_hex(3)}"


class MeshService:
    def __init__(self, ctx: NodeContext) -> None:
        cfg = ctx.config.mesh
        self.ctx = ctx
        self.cfg = cfg
        self.name = cfg.node_name or default_node_name(cfg.port)
        self.epoch = int(time.time() * 1000)
        self.transport = MeshTransport(
            node_name=self.name, bind=cfg.bind, port=cfg.port, secrets=cfg.secrets(),
            advertise=cfg.advertise_address(), dial_timeout=cfg.dial_timeout,
            handshake_timeout=cfg.handshake_timeout, max_frame=cfg.max_frame,
            ssl_contexts=cfg.ssl_contexts(),  # mutual TLS with the cluster CA when [mesh] tls_* are set
        )
        self.core: MeshCore | None = None
        self.discovery: Discovery | None = None
        self.joined = trio.Event()
        self._wake = trio.Event()
        self._dirty = False
        self._nursery: trio.Nursery | None = None
        self._send_work: trio.MemorySendChannel[tuple[str, int, Element, Any]]
        self._work: trio.MemoryReceiveChannel[tuple[str, int, Element, Any]]
        self._send_work, self._work = trio.open_memory_channel(math.inf)
        self._busy = 0  # items queued for the worker or in its hands
        #: Fault injection for tests (meshxmpp.testing.cluster partitions): frames from these peers are
        #: dropped on arrival. Empty in production.
        self.blocked: set[str] = set()
        # One parser per peer, fed one stanza at a time (a fresh parser per stanza cost more than
        # the rest of a forwarded stanza's handling), and recently re-routed shared stanzas.
        self._parsers: dict[str, XmlStream] = {}
        self._rerouted: dict[bytes, None] = {}

    # ------------------------------------------------------------------ lifecycle

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        cfg = self.cfg
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            port = await nursery.start(self.transport.run)
            addr = self.transport.advertise or await self._guess_address(port)
            self.transport.advertise = addr
            seeds = await self._seeds(addr)
            # Discovery (docs/mesh.md, "Discovery"): more seeds from the database or DNS; refuses to
            # join (ProtocolMismatch) a cluster that speaks another mesh protocol version.
            self.discovery = make_discovery(cfg, config=self.ctx.config, storage=self.ctx.storage,
                                            name=self.name, epoch=self.epoch)
            if self.discovery is not None:
                nursery.start_soon(self._close_discovery_at_exit, self.discovery)
                seeds += [s for s in await self.discovery.start(addr) if s not in seeds]
            self.core = MeshCore(
                self.name, addr, timing=cfg.timing(), rng=random.Random(), now=trio.current_time(),
                epoch=self.epoch, seeds=seeds, repair_interval=cfg.repair_every(),
                forward_window=cfg.forward_window, forward_retransmit=cfg.forward_retransmit,
                max_frame=self.transport.max_frame,
            )
            self.transport.on_frame = self._on_frame
            self.transport.on_connection_closed = self._on_closed
            hub = self.ctx.hub
            hub.hook("session/bound", self._bound)
            hub.hook("session/end", self._ended)
            self._pump()
            nursery.start_soon(self._timer_loop)
            nursery.start_soon(self._worker)
            if self.discovery is not None:
                nursery.start_soon(self.discovery.run, self.add_seeds)
            if self.core.joined:
                self.joined.set()
            with trio.move_on_after(cfg.join_timeout):
                await self.joined.wait()
            if not self.joined.is_set():
                log.warning("mesh %s: no seed answered within %.1f s; serving alone until one does",
                            self.name, cfg.join_timeout)
            log.info("mesh %s on %s:%d (epoch %d), %d session records", self.name, addr[0], addr[1],
                     self.epoch, len(self.core.directory))
            task_status.started(self)

    async def shutdown(self) -> None:
        """Leave gracefully: drain the work queue and unacked forwards (bounded), say goodbye, close."""
        timeout = DRAIN_TIMEOUT
        core = self.core
        if core is None or self._nursery is None:
            return
        with trio.move_on_after(timeout):
            while self._busy or core.forwarder.statistics().in_flight:  # noqa: ASYNC110
                await trio.sleep(0.01)  # bounded poll of two counters while the network drains
        if self.discovery is not None:
            with trio.move_on_after(1.0):
                try:
                    await self.discovery.leave()  # our heartbeat row goes now, not at its expiry
                except Exception as exc:
                    log.warning("mesh %s: could not remove the heartbeat row: %s", self.name, exc)
        core.leave(trio.current_time())
        self._pump()
        with trio.move_on_after(min(1.0, timeout)):
            await trio.sleep(core.membership.timing.gossip_interval * 2)  # let the 'left' gossip go out
        await self.transport.aclose()
        self._nursery.cancel_scope.cancel()

    def add_seeds(self, addrs: list[tuple[str, int]]) -> None:
        """Addresses found by discovery after the start: ask those that are not members to join."""
        core = self.core
        if core is None:
            return
        asked = core.add_seeds(trio.current_time(), addrs)
        if asked:
            log.info("mesh %s: discovered %s", self.name, ", ".join(f"{h}:{p}" for h, p in asked))
            self._pump()

    @staticmethod
    async def _close_discovery_at_exit(discovery: Discovery) -> None:
        try:
            await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                await discovery.aclose()

    async def _guess_address(self, port: int) -> tuple[str, int]:
        """Where peers reach us when bound to a wildcard and no advertise address is set: the local
        address of a route towards the first peer, else the host name's address."""
        host = "127.0.0.1"
        peers = self.cfg.peer_addresses()

        def probe() -> str:
            if peers:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                    try:
                        s.connect((peers[0][0], peers[0][1] or 5701))
                        return str(s.getsockname()[0])
                    except OSError:
                        pass
            try:
                return socket.gethostbyname(socket.gethostname())
            except OSError:
                return host

        if self.cfg.bind not in _WILDCARDS:
            return (self.cfg.bind, port)
        return (await trio.to_thread.run_sync(probe), port)

    async def _seeds(self, me: tuple[str, int]) -> list[tuple[str, int]]:
        """The configured peers, without this node itself (one peer list is often shared by all)."""
        out = []
        for host, port in self.cfg.peer_addresses():
            try:
                infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except OSError:
                out.append((host, port))  # resolved again at each dial
                continue
            ips = {str(info[4][0]) for info in infos}
            if port == me[1] and any(ip == me[0] or _is_local(ip) and _is_local(me[0]) for ip in ips):
                continue
            out.append((host, port))
        return out

    # ------------------------------------------------------------------ the router's side

    def remote_of(self, bare: JID) -> list[SessionRecord]:
        core = self.core
        if core is None:
            return []
        records = core.remote_of(bare)
        if records:
            local = self.ctx.sessions
            records = [r for r in records if local.get(r.jid) is None]
        return records

    def remote_get(self, full: JID) -> SessionRecord | None:
        core = self.core
        if core is None:
            return None
        record = core.directory.get(full)
        return record if record is not None and record.node != self.name else None

    def any_carbons(self, bare: JID) -> bool:
        return any(r.carbons for r in self.remote_of(bare)) if self.core is not None else False

    def forward(self, record: SessionRecord, el: Element, *, shared: bool = False) -> bool:
        """Forward ``el`` to ``record``'s session; ``shared``: the same decision delivered it to other
        sessions of the user too (see `mesh.core.Inbound`)."""
        core = self.core
        if core is None:
            return False
        ok = core.forward(trio.current_time(), record.node, str(record.jid), to_bytes(el), _HOPS.get(),
                          shared=shared)
        if ok:
            self._kick()
        return ok

    def forward_to_node(self, node: str, target: str, el: Element) -> bool:
        """Send ``el`` to ``node`` for ``target``, which need not be a session: there the stanza is
        delivered to ``target``'s session if it has one, else routed again by that node's router (so a
        room or a component that lives there takes it). False when ``node`` is not reachable now."""
        core = self.core
        if core is None or node == self.name:
            return False
        ok = core.forward(trio.current_time(), node, target, to_bytes(el), _HOPS.get())
        if ok:
            self._kick()
        return ok

    def live_members(self) -> list[str]:
        """Names of the members alive in this node's view (this node included), sorted."""
        return [m.name for m in self.core.membership.alive()] if self.core is not None else [self.name]

    def set_component(self, domain: str, connected: bool) -> None:
        """Record in the replicated table whether this node has a connection of the external component
        ``domain`` (a record for the JID ``domain/component``, so every node knows where it is)."""
        core = self.core
        if core is None:
            return
        # One record per (domain, node): a component connected to several nodes stays reachable
        # through the others when one connection closes.
        jid = JID.parse(domain).with_resource(f"{COMPONENT_RESOURCE}/{self.name}")
        if connected:
            core.put_session(SessionRecord(jid=jid, node=self.name, bound_at=time.time()))
        else:
            core.remove_session(jid)
        self._after_local_write()

    def component_nodes(self, domain: str) -> list[str]:
        """Other nodes that have a connection of the component ``domain`` (sorted)."""
        core = self.core
        if core is None:
            return []
        return sorted(r.node for r in core.remote_of(JID.parse(domain))
                      if (r.jid.resource or "").partition("/")[0] == COMPONENT_RESOURCE)

    def publish_c2s_address(self, address: str | None) -> None:
        """Publish (or withdraw, with None) where clients reach this node ("host:port"), for
        `<see-other-host/>` redirects by nodes that shut down. Kept in the replicated table as a record
        of the JID ``meshxmpp.invalid/c2s/<node>`` (no user can have it) with the address as its text."""
        core = self.core
        if core is None:
            return
        jid = JID.parse(f"{_NODE_INFO_DOMAIN}/c2s/{self.name}")
        if address is None:
            core.remove_session(jid)
        else:
            core.put_session(SessionRecord(jid=jid, node=self.name, available=False, presence=address,
                                           bound_at=time.time()))
        self._after_local_write()

    def c2s_addresses(self) -> dict[str, str]:
        """Live nodes' published client addresses (this node's excluded): node name -> "host:port"."""
        core = self.core
        if core is None:
            return {}
        live = set(self.live_members())
        return {r.node: r.presence for r in core.remote_of(JID.parse(_NODE_INFO_DOMAIN))
                if r.presence and r.node in live and (r.jid.resource or "").startswith("c2s/")}

    def spawn(self, awaitable: Awaitable[Any]) -> None:
        """Run router work that has to await (storing a message offline) in the service's nursery."""
        async def run() -> None:
            await awaitable

        if self._nursery is not None:
            self._nursery.start_soon(run)

    def session_changed(self, session: Session) -> None:
        core = self.core
        if core is None or session.ended or self.ctx.sessions.get(session.jid) is not session:
            return
        core.put_session(self._record(session))
        self._after_local_write()

    @property
    def busy(self) -> int:
        """Forwarded stanzas and re-routes queued for (or in the hands of) the worker."""
        return self._busy

    def status(self) -> dict[str, object]:
        assert self.core is not None
        status = self.core.status()
        status["profile"] = self.cfg.profile
        return status

    # ------------------------------------------------------------------ hub hooks

    def _bound(self, session: Session) -> None:
        core = self.core
        if core is None:
            return
        session.bound_at = core.bind_time(session.jid, session.bound_at)
        core.put_session(self._record(session))
        self._after_local_write()

    async def _ended(self, session: Session) -> None:
        core = self.core
        if core is None or not hasattr(session, "jid"):
            return
        current = self.ctx.sessions.get(session.jid)
        if current is None:
            core.remove_session(session.jid)
        elif current is not session:
            core.put_session(self._record(current))  # a newer login replaced it here
        self._after_local_write()

    def _record(self, s: Session) -> SessionRecord:
        presence = s.presence
        return SessionRecord(
            jid=s.jid, node=self.name, available=s.available, priority=s.priority, show=s.show,
            last_activity=s.last_activity, carbons=s.carbons, interested=s.interested,
            bound_at=s.bound_at, presence=to_str(presence) if presence is not None and s.available else None,
        )

    def _after_local_write(self) -> None:
        assert self.core is not None
        self._handle_events()  # a conflict found at put_session
        self._kick()

    # ------------------------------------------------------------------ transport callbacks

    def _on_frame(self, peer: str, kind: int, payload: bytes) -> None:
        assert self.core is not None
        if peer in self.blocked:
            return
        self.core.on_frame(trio.current_time(), peer, kind, payload)
        self._pump()

    def _on_closed(self, event: ConnectionClosed) -> None:
        if event.outbound and event.peer is None and event.dial_addr is not None and self.core is not None:
            self.core.on_send_failed(trio.current_time(), event.dial_addr)
            self._pump()

    # ------------------------------------------------------------------ pumping

    def _kick(self) -> None:
        if not self._dirty:
            self._dirty = True
            self._wake.set()

    async def _timer_loop(self) -> None:
        core = self.core
        assert core is not None
        while True:
            if not self._dirty:
                with trio.move_on_at(core.next_deadline()):
                    await self._wake.wait()
            self._wake = trio.Event()
            self._dirty = False
            now = trio.current_time()
            if now >= core.next_deadline():
                core.on_timer(now)
            self._pump()

    def _pump(self) -> None:
        core = self.core
        if core is None:
            return
        for _ in range(100):
            out = core.drain_outgoing()
            if not out:
                break
            now = trio.current_time()
            for addr, kind, payload in out:
                if not self.transport.send(addr, kind, payload) and kind == Kind.MEMBERSHIP:
                    core.on_send_failed(now, addr)
        self._handle_events()

    def _handle_events(self) -> None:
        core = self.core
        assert core is not None
        for event in core.drain_events():
            if isinstance(event, Inbound):
                self._inbound(event)
            elif isinstance(event, Reroute):
                el = self._parse(event.stanza, "")
                if el is not None:
                    self._queue("reroute", event.hops, el, event)
            elif isinstance(event, SessionsLost):
                self._lost(event)
            elif isinstance(event, SessionsBack):
                self._back(event)
            elif isinstance(event, ConflictLost):
                session = self.ctx.sessions.get(event.jid)
                if session is not None:
                    log.info("mesh: %s is bound on %s too (newer bind): closing ours with <conflict/>",
                             event.jid, event.winner.node)
                    session.close("conflict", "Replaced by a newer login")
            elif isinstance(event, Joined):
                log.info("mesh %s: joined through %s", self.name, event.via)
                self.joined.set()
            elif isinstance(event, MemberChanged):
                m = event.member
                log.info("mesh %s: member %s (%s:%d) is %s", self.name, m.name, m.addr[0], m.addr[1], event.state)
                if event.state in ("alive", "dead", "left"):
                    # Features that place things on live members (MUC rooms) re-check their placement.
                    self.ctx.hub.fire("mesh/members", self.live_members())

    def _parse(self, data: bytes, peer: str) -> Element | None:
        """One forwarded stanza, with the protections of a client stream (size, depth, no DTD)."""
        parser = self._parsers.get(peer)
        if parser is None:
            c2s = self.ctx.config.c2s
            parser = XmlStream(max_stanza_size=c2s.max_stanza_size + 65536, max_depth=c2s.max_depth,
                               allowed_ns=frozenset({ns.CLIENT}))
            parser.feed(stream_header(from_=None, to=None, id=None))
            self._parsers[peer] = parser
        try:
            events = parser.feed(data)
            if len(events) == 1 and isinstance(events[0], StanzaReceived) and not parser.error_pending:
                return events[0].element
            error = "not exactly one stanza"
        except StreamError as e:
            error = e.condition
        del self._parsers[peer]  # start clean for the next one
        log.warning("mesh: dropping an unreadable forwarded stanza from %s (%s)", peer or "ourselves", error)
        return None

    def _inbound(self, event: Inbound) -> None:
        assert self.core is not None
        if not self._busy:
            try:
                session = self.ctx.sessions.get(JID.parse(event.target))
            except InvalidJID:
                session = None
            if session is not None and not session.closed:
                # The fast path: the bytes are the stanza exactly as the sending node's router
                # serialised it for a client (jabber:client), so they go to the outbox unparsed. An
                # authenticated peer is trusted not to corrupt client streams (docs/mesh.md).
                session.send_bytes(event.stanza)
                self.core.acknowledge(event.peer, event.token)
                self._kick()
                return
        el = self._parse(event.stanza, event.peer)
        if el is None:
            self.core.acknowledge(event.peer, event.token)
            return
        self._queue("inbound", event.hops, el, event)

    def _queue(self, what: str, hops: int, el: Element, extra: Any) -> None:
        self._busy += 1
        self._send_work.send_nowait((what, hops, el, extra))

    async def _worker(self) -> None:
        async for what, hops, el, extra in self._work:
            try:
                await self._deliver(extra.target, hops, el, extra.shared)
            except Exception:  # one bad stanza must not stop the mesh
                log.exception("mesh: routing a forwarded stanza failed")
            finally:
                self._busy -= 1
            if what == "inbound" and self.core is not None:
                self.core.acknowledge(extra.peer, extra.token)
                self._kick()

    async def _deliver(self, target: str, hops: int, el: Element, shared: bool) -> None:
        try:
            jid: JID | None = JID.parse(target)
        except InvalidJID:
            jid = None
        session = self.ctx.sessions.get(jid) if jid is not None else None
        if session is not None and not session.closed:
            session.send(el)
            return
        if el.name == "message" and any(c.ns == _CARBON_NS for c in el.children if not isinstance(c, str)):
            return  # a carbon copy for a session that is gone: its own copy went elsewhere
        if shared:
            if jid is not None and self.ctx.router.available_of(jid.bare):
                return  # the user's other sessions had their copies by the same decision: no duplicate
            # Several copies of one decision (one per session that is gone) lead to one re-route.
            key = to_bytes(el)
            if key in self._rerouted:
                return
            self._rerouted[key] = None
            if len(self._rerouted) > 1024:
                del self._rerouted[next(iter(self._rerouted))]
        token = _HOPS.set(hops)
        try:
            result = self.ctx.router.route(el, None)
            if result is not None and inspect.isawaitable(result):
                await result
        finally:
            _HOPS.reset(token)

    def _lost(self, event: SessionsLost) -> None:
        how = "left" if event.left else "is gone"
        log.info("mesh %s: node %s %s with %d sessions%s", self.name, event.node, how, len(event.records),
                 "; announcing them unavailable" if event.announce else "")
        if not event.left:
            self.transport.disconnect(event.node)  # a link it might still hold is not to be trusted
        if event.announce:
            from meshxmpp.im.presence import announce_lost

            # Component records (no localpart) are not users: nobody is subscribed to them.
            self._announce([r for r in event.records if r.available and r.jid.local is not None],
                           announce_lost, "unavailable")

    def _back(self, event: SessionsBack) -> None:
        log.info("mesh %s: %d sessions of %s are back%s", self.name, len(event.records), event.node,
                 "; announcing their presence again" if event.announce else "")
        if event.announce:
            from meshxmpp.im.presence import announce_back

            self._announce([r for r in event.records if r.available and r.jid.local is not None],
                           announce_back, "available")

    def _announce(self, records: list[SessionRecord], announce: Any, what: str) -> None:
        if not records or self._nursery is None:
            return

        async def run() -> None:
            for record in records:
                try:
                    await announce(self.ctx, record)
                except Exception:
                    log.exception("mesh: announcing %s %s failed", record.jid, what)

        self._nursery.start_soon(run)


def _is_local(ip: str) -> bool:
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return addr.is_loopback or addr.is_unspecified
