"""The conference domain (``[muc] domain``, XEP-0045): where each room lives in the mesh, and its storage.

The rooms themselves are pure state machines (``muc.room.Room``); this module is their Trio glue:

- **Hooks.** ``message/remote``, ``presence/remote`` and ``iq/remote`` (the router fires them for every
  domain that is not ours; the conference domain is one): stanzas to another domain are left to the
  next handler (None). Stanzas to the domain itself are the service's (disco#info, disco#items of the
  public rooms, ping); stanzas to ``room@domain[/nick]`` go to the room.
- **Placement.** Every room has one owner node: the highest ``sha256(room JID, member name)`` among the
  members this node sees alive or suspect (rendezvous hashing; a suspect member may well be alive, and
  moving its rooms at every suspicion would split them). A node that is not the owner forwards the
  stanza there (``MeshService.forward_to_node``); the owner's router routes it again and it reaches this
  module there. When the owner cannot be reached the stanza is handled here.
- **Holding.** The owner keeps the ``Room`` in memory, loaded from storage at its first stanza (or
  created by a first join). After each stanza the room's flags say what to write: ``changed`` (config,
  affiliations, subject: the whole record) or ``occupants_changed`` (only the occupant mirror, with
  ``Rooms.set_occupants``). Writes go through one writer task, latest state per room, in the order they
  were decided; an owner or admin iq that changed the room is answered once its write committed.
  An empty non-persistent room is deleted from storage and memory.
- **Membership changes** (hub ``mesh/members``): rooms held here that another member owns now are
  released (a last mirror, holder None); rooms this node owns now whose holder is gone (dead, left,
  unknown, or this node's earlier life) are restored from their mirror, and every occupant resource
  that has no session anywhere any more is dropped with status 333: the unavailable presences are
  routed by the new owner only, so every surviving occupant hears each loss once. Rooms this node keeps
  drop the occupants of a node that died the same way.
- **Sessions.** A local session's presence to a room is remembered; when the session ends without an
  unavailable presence to the room, the service sends one for it (RFC 6121 directed presence, which
  ``im.presence`` keeps for our own domain only).

What a room's death costs (in-flight stanzas, history) is in docs/muc.md.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
from collections.abc import Awaitable, Iterable
from typing import TYPE_CHECKING, Any

import trio

from meshxmpp.jid import JID, InvalidJID
from meshxmpp.muc.room import Room, RoomConfig
from meshxmpp.storage.base import RoomRecord
from meshxmpp.xml import ns
from meshxmpp.xml.element import Element

if TYPE_CHECKING:
    from meshxmpp.c2s.session import Session
    from meshxmpp.context import NodeContext
    from meshxmpp.hub import Hub
    from meshxmpp.routing.router import StanzaEvent

__all__ = ["MUCService", "owner_of", "register", "service_of"]

log = logging.getLogger("meshxmpp.muc")

SERVICE_NAME = "Chatrooms"
#: Hub event answered with the service (``service_of``), so nothing keeps a registry of services.
SERVICE_EVENT = "muc/service"
#: Error conditions of a bounced message that mean the occupant's session is gone (XEP-0045 §18.1.2
#: lets a room remove such a "ghost"; Prosody does the same).
GHOST_CONDITIONS = frozenset({"gone", "item-not-found", "recipient-unavailable", "redirect",
                              "remote-server-not-found", "remote-server-timeout", "service-unavailable"})
_PLACED_STATES = ("alive", "suspect")
_GONE_STATES = ("dead", "left")
#: Bound on the writer's last flush when the node stops (storage calls are bounded themselves).
FLUSH_TIMEOUT = 5.0


def owner_of(room: str, members: Iterable[str]) -> str | None:
    """Rendezvous hashing: the member with the highest hash of (room, member); None for no members.

    Stable across processes and Python versions (sha256, not ``hash()``), and when a member goes
    only its rooms move."""
    best: tuple[bytes, str] | None = None
    for member in members:
        score = (hashlib.sha256(f"{room}\x00{member}".encode()).digest(), member)
        if best is None or score > best:
            best = score
    return best[1] if best is not None else None


class _Write:
    """What storage must hold for one room once the writer gets to it (only the latest counts)."""

    __slots__ = ("kind", "record", "occupants", "node")

    def __init__(self, kind: str, record: RoomRecord | None = None,
                 occupants: list[dict[str, Any]] | None = None, node: str | None = None) -> None:
        self.kind = kind  # "put" | "occupants" | "release" | "delete"
        self.record = record
        self.occupants = occupants
        self.node = node


class MUCService:
    def __init__(self, ctx: NodeContext) -> None:
        domain = ctx.config.muc.domain
        assert domain is not None
        self.ctx = ctx
        self.domain: str = domain
        cfg = ctx.config.muc
        self.instant = RoomConfig(history_size=cfg.history_size, persistent=cfg.default_persistent)
        #: Rooms held (in memory) by this node, by bare room JID.
        self.rooms: dict[JID, Room] = {}
        self._loading: dict[JID, trio.Lock] = {}
        # Writes: room -> what storage must end up holding; the writer takes them in order.
        self._dirty: dict[JID, _Write] = {}
        self._writing: JID | None = None
        self._seq = 0  # one per write queued
        self._queued_seq: dict[JID, int] = {}  # room -> the latest write queued for it
        self._committed: dict[JID, int] = {}  # room -> the latest write done (committed, or failed: logged)
        self._progress = trio.Event()
        self._wake = trio.Event()
        self._writer_started = False
        self._scan_running = False
        self._scan_again = False
        self._scanned = False
        self._members: set[str] = set()
        #: Local sessions' presence to rooms: full JID -> room bare JID -> occupant JID (room/nick).
        self._joined: dict[JID, dict[JID, JID]] = {}

    # ------------------------------------------------------------------ placement

    @property
    def me(self) -> str:
        mesh = self.ctx.mesh
        return mesh.name if mesh is not None else self.ctx.node_name

    def placement_members(self) -> list[str]:
        """Members a room may be placed on: alive or suspect in this node's view (itself included)."""
        mesh = self.ctx.mesh
        if mesh is None:
            return [self.me]
        core = mesh.core
        if core is None:
            return mesh.live_members()
        return [m.name for m in core.membership.members() if m.state in _PLACED_STATES]

    def owner(self, room: JID) -> str:
        return owner_of(str(room), self.placement_members()) or self.me

    def _holder_gone(self, holder: str | None) -> bool:
        """Nobody holds a room whose record names ``holder`` (so its owner restores it now)."""
        if holder is None or holder == self.me:
            return True  # released, or held by this node's earlier life (a restart)
        mesh = self.ctx.mesh
        if mesh is None or mesh.core is None:
            return True
        member = mesh.core.membership.member(holder)
        return member is None or member.state in _GONE_STATES

    # ------------------------------------------------------------------ hooks

    def on_stanza(self, event: StanzaEvent) -> Any:
        """``{kind}/remote``: ours when ``to`` is the conference domain, else None (not handled)."""
        to = event.to
        if to is None or to.domain != self.domain:
            return None
        self._maybe_scan()
        el = event.stanza
        if to.local is None:
            return self._service_stanza(event)
        room = to.bare
        if event.origin is not None and el.name == "presence":
            self._track(event.origin, to, el)
        mesh = self.ctx.mesh
        if mesh is not None:
            owner = self.owner(room)
            if owner != self.me and mesh.forward_to_node(owner, str(to), el):
                return True
        held = self.rooms.get(room)
        if held is not None:
            return self._handle(held, el) or True
        return self._load_and_handle(room, el)

    def on_members(self, _alive: list[str]) -> None:
        """Hub ``mesh/members`` (sync, from inside the mesh's event handling): re-check, in a task of
        its own, where the rooms held here belong. Until then stanzas are placed with the new view."""
        if self.ctx.nursery is not None:
            self.ctx.nursery.start_soon(self._members_changed)
        return None

    async def _members_changed(self) -> None:
        members = set(self.placement_members())
        went = self._members - members
        self._members = members
        for jid, room in list(self.rooms.items()):
            if owner_of(str(jid), members) != self.me:
                self._release(room)
            elif went:
                self._drop_gone(room)
        self._maybe_scan(force=True)
        await trio.lowlevel.checkpoint()

    def on_session_end(self, session: Session) -> None:
        """A local session ended: it leaves the rooms it did not leave itself."""
        joined = self._joined.pop(getattr(session, "jid", None), None)  # type: ignore[arg-type]
        if not joined:
            return None
        for occupant in joined.values():
            el = Element("presence", ns.CLIENT, {"from": str(session.jid), "to": str(occupant),
                                                 "type": "unavailable"})
            result = self.ctx.router.route(el, None)
            if result is not None and self.ctx.nursery is not None:
                self.ctx.nursery.start_soon(_await, result)
        return None

    def disco_items_host(self, items: list[tuple[str, str | None]]) -> None:
        items.append((self.domain, SERVICE_NAME))

    def _track(self, session: Session, to: JID, el: Element) -> None:
        type_ = el.attrs.get("type")
        if type_ is None and to.resource is not None:
            self._joined.setdefault(session.jid, {})[to.bare] = to
        elif type_ == "unavailable":
            rooms = self._joined.get(session.jid)
            if rooms is not None:
                rooms.pop(to.bare, None)
                if not rooms:
                    del self._joined[session.jid]

    # ------------------------------------------------------------------ rooms

    def _handle(self, room: Room, el: Element) -> Awaitable[None] | None:
        """Hand ``el`` to ``room``, route what it says, queue what must be stored."""
        now = self.ctx.now()
        kind = el.name
        if kind == "presence":
            out = room.presence(el, now)
            if el.find("x", ns.MUC) is not None:
                _join_errors_echo_x(out)
        elif kind == "message":
            out = room.message(el, now)
            if el.attrs.get("type") == "error":
                out += self._ghost(room, el)
        else:
            out = room.iq(el, now)
        wait_commit = kind == "iq" and room.changed and el.attrs.get("type") in ("get", "set")
        seq = self._after(room)
        if wait_commit and seq:
            return self._send_after_commit(room.jid, seq, out)
        pending = self._send(out)
        return _gather(pending) if pending else None

    def _ghost(self, room: Room, el: Element) -> list[Element]:
        """A message we sent an occupant bounced as undeliverable: that resource is gone."""
        try:
            sender = JID.parse(el.attrs.get("from") or "")
        except InvalidJID:
            return []
        error = el.find("error")
        condition = next((c.name for c in error.children if isinstance(c, Element)
                          and c.ns == ns.STANZA_ERRORS), None) if error is not None else None
        if sender not in room.occupant_jids() or condition not in GHOST_CONDITIONS:
            return []
        return room.drop({sender}, "333")

    async def _send_after_commit(self, jid: JID, seq: int, out: list[Element]) -> None:
        await self._wait_written(jid, seq)
        await _gather(self._send(out))

    def _send(self, out: list[Element]) -> list[Awaitable[Any]]:
        pending = []
        route = self.ctx.router.route
        for el in out:
            result = route(el, None)
            if result is not None:
                pending.append(result)
        return pending

    def _after(self, room: Room) -> int:
        """Queue what ``room``'s flags say must be stored; forget it when it is over. Returns the
        sequence number of the write queued (0: none)."""
        jid = room.jid
        over = room.destroyed or (room.empty and (room.locked or not room.config.persistent))
        if over:
            if self.rooms.get(jid) is room:
                del self.rooms[jid]
            room.changed = room.occupants_changed = False
            return self._queue(jid, _Write("delete"))
        if room.changed:
            room.changed = room.occupants_changed = False
            return self._queue(jid, _Write("put", self._record(room, self.me)))
        if room.occupants_changed:
            room.occupants_changed = False
            return self._queue(jid, _Write("occupants", occupants=room.occupants_snapshot(), node=self.me))
        return 0

    def _record(self, room: Room, node: str | None) -> RoomRecord:
        config = room.config.to_dict()
        if room.locked:
            config["locked"] = True  # not a RoomConfig field (from_dict ignores it): awaiting its owner
        return RoomRecord(jid=str(room.jid), config=config, affiliations=dict(room.affiliations),
                          subject=room.subject, subject_by=room.subject_by, persistent=room.config.persistent,
                          occupants=room.occupants_snapshot(), node=node)

    def _restore(self, record: RoomRecord) -> Room:
        return Room.restore(JID.parse(record.jid), config=RoomConfig.from_dict(record.config),
                            affiliations=dict(record.affiliations), subject=record.subject,
                            subject_by=record.subject_by, occupants=record.occupants,
                            locked=bool(record.config.get("locked")))

    def _release(self, room: Room) -> None:
        """Another member owns ``room`` now: a last mirror (holder None), then forget it here."""
        del self.rooms[room.jid]
        if room.empty and not room.config.persistent:
            self._queue(room.jid, _Write("delete"))
        elif room.changed:
            room.changed = room.occupants_changed = False
            self._queue(room.jid, _Write("put", self._record(room, None)))
        else:
            self._queue(room.jid, _Write("release", occupants=room.occupants_snapshot()))
        log.info("muc %s: %s moves to %s", self.me, room.jid, self.owner(room.jid))

    def _drop_gone(self, room: Room) -> None:
        """Occupant resources with no session anywhere (their node died) leave with status 333."""
        session_at = self.ctx.router.session_at
        gone = {j for j in room.occupant_jids() if session_at(j) is None}
        if not gone:
            return
        log.info("muc %s: %d resources in %s are gone", self.me, len(gone), room.jid)
        pending = self._send(room.drop(gone, "333"))
        self._after(room)
        if pending and self.ctx.nursery is not None:
            self.ctx.nursery.start_soon(_gather, pending)

    async def _load_and_handle(self, jid: JID, el: Element) -> None:
        room = await self._load(jid, el)
        if room is None:
            return
        mesh = self.ctx.mesh
        owner = self.owner(jid)
        if owner != self.me and mesh is not None and mesh.forward_to_node(owner, el.attrs["to"], el):
            return  # the placement changed while we read storage
        result = self._handle(room, el)
        if result is not None:
            await result

    async def _load(self, jid: JID, el: Element | None) -> Room | None:
        """The room held here, else restored from storage, else created by a join (``el``). Stanzas
        that find no room are answered here (None)."""
        lock = self._loading.setdefault(jid, trio.Lock())
        try:
            async with lock:
                room = self.rooms.get(jid)
                if room is not None:
                    return room
                await self._wait_idle(jid)
                record = await self.ctx.storage.rooms.get(str(jid))
                room = self.rooms.get(jid)
                if room is not None:
                    return room
                if record is not None:
                    room = self._restore(record)
                    self.rooms[jid] = room
                    log.info("muc %s: restored %s (held by %s, %d occupants)", self.me, jid, record.node,
                             len(record.occupants))
                    self._drop_gone(room)
                    if self.rooms.get(jid) is room:
                        self._queue(jid, _Write("put", self._record(room, self.me)))
                        room.changed = room.occupants_changed = False
                    return self.rooms.get(jid)
                if el is None:
                    return None
                return self._create(jid, el)
        finally:
            if not lock.statistics().tasks_waiting and not lock.locked():
                self._loading.pop(jid, None)

    def _create(self, jid: JID, el: Element) -> Room | None:
        to = JID.parse(el.attrs["to"])
        type_ = el.attrs.get("type")
        if el.name == "presence" and type_ is None and to.resource is not None:
            creator = JID.parse(el.attrs["from"])
            room = Room.create(jid, creator, instant_default=self.instant)
            self.rooms[jid] = room
            log.info("muc %s: %s created by %s", self.me, jid, creator.bare)
            return room
        if el.name == "presence":
            if type_ is None:  # no nick
                self.ctx.router.bounce(el, "modify", "jid-malformed")
            return None
        if type_ not in ("error", "result"):
            self.ctx.router.bounce(el, "cancel", "item-not-found")
        return None

    # ------------------------------------------------------------------ taking rooms over

    def _maybe_scan(self, force: bool = False) -> None:
        if self._scanned and not force:
            return
        nursery = self.ctx.nursery
        mesh = self.ctx.mesh
        if nursery is None or (mesh is not None and not mesh.joined.is_set()):
            return  # a partial view of the members would claim rooms others hold
        self._scanned = True
        if self._scan_running:
            self._scan_again = True
            return
        self._scan_running = True
        nursery.start_soon(self._scan)

    async def _scan(self) -> None:
        """Restore the rooms this node owns whose holder is gone (with occupants: a room nobody is in
        waits for its next stanza)."""
        try:
            while True:
                self._scan_again = False
                for name in await self.ctx.storage.rooms.list():
                    try:
                        jid = JID.parse(name)
                    except InvalidJID:
                        continue
                    if jid in self.rooms or self.owner(jid) != self.me:
                        continue
                    record = await self.ctx.storage.rooms.get(name)
                    if record is None or not record.occupants or not self._holder_gone(record.node):
                        continue
                    if self.owner(jid) == self.me:
                        await self._load(jid, None)
                if not self._scan_again:
                    return
        except Exception:
            log.exception("muc %s: taking rooms over failed", self.me)
        finally:
            self._scan_running = False

    # ------------------------------------------------------------------ the service itself

    def _service_stanza(self, event: StanzaEvent) -> Any:
        el = event.stanza
        type_ = el.attrs.get("type")
        if el.name == "presence" or type_ in ("error", "result"):
            return True
        if el.name == "message":
            self.ctx.router.bounce(el, "cancel", "service-unavailable")
            return True
        child = next((c for c in el.children if isinstance(c, Element)), None)
        if type_ == "get" and child is not None and child.name == "query" and not child.get("node"):
            if child.ns == ns.DISCO_INFO:
                reply = el.reply()
                query = reply.add("query", ns.DISCO_INFO)
                query.add("identity", ns.DISCO_INFO, {"category": "conference", "type": "text",
                                                      "name": SERVICE_NAME})
                for var in (ns.DISCO_INFO, ns.DISCO_ITEMS, ns.MUC, ns.PING):
                    query.add("feature", ns.DISCO_INFO, {"var": var})
                return self.ctx.router.route(reply, None) or True
            if child.ns == ns.DISCO_ITEMS:
                return self._items(el)
        if type_ == "get" and child is not None and child.ns == ns.PING:
            return self.ctx.router.route(el.reply(), None) or True
        self.ctx.router.bounce(el, "cancel", "service-unavailable")
        return True

    async def _items(self, el: Element) -> None:
        """disco#items of the service: the public rooms, from storage (every node's) and memory."""
        found: dict[str, str | None] = {}
        for name in await self.ctx.storage.rooms.list():
            room = self.rooms.get(JID.parse(name))
            if room is not None:
                continue
            record = await self.ctx.storage.rooms.get(name)
            if record is None or record.config.get("locked"):
                continue
            config = RoomConfig.from_dict(record.config)
            if config.public and (config.persistent or record.occupants):
                found[name] = config.name or None
        for jid, room in self.rooms.items():
            if room.config.public and not room.locked and not room.destroyed:
                found[str(jid)] = room.config.name or None
        reply = el.reply()
        query = reply.add("query", ns.DISCO_ITEMS)
        for name in sorted(found):
            attrs = {"jid": name}
            if found[name]:
                attrs["name"] = found[name]  # type: ignore[assignment]
            query.add("item", ns.DISCO_ITEMS, attrs)
        await _gather(self._send([reply]))

    # ------------------------------------------------------------------ the writer

    def _queue(self, jid: JID, write: _Write) -> int:
        previous = self._dirty.get(jid)
        if write.kind in ("occupants", "release") and previous is not None and previous.kind == "put":
            record = previous.record
            assert record is not None and write.occupants is not None
            record.occupants = write.occupants
            record.node = write.node if write.kind == "occupants" else None
            write = previous
        self._dirty[jid] = write
        self._seq += 1
        self._queued_seq[jid] = self._seq
        self._wake.set()
        if not self._writer_started and self.ctx.nursery is not None:
            self._writer_started = True
            self.ctx.nursery.start_soon(self._writer)
        return self._seq

    async def _writer(self) -> None:
        try:
            while True:
                while not self._dirty:
                    self._wake = trio.Event()
                    await self._wake.wait()
                await self._write_one()
        finally:
            # The node stops: what was decided is written (bounded), as a clean shutdown should.
            with trio.CancelScope(shield=True), trio.move_on_after(FLUSH_TIMEOUT):
                while self._dirty:
                    await self._write_one()

    async def _write_one(self) -> None:
        jid, write = next(iter(self._dirty.items()))
        del self._dirty[jid]
        seq = self._queued_seq.pop(jid, 0)
        self._writing = jid
        rooms = self.ctx.storage.rooms
        name = str(jid)
        try:
            if write.kind == "delete":
                await rooms.delete(name)
            elif write.kind == "put":
                assert write.record is not None
                await rooms.put(write.record)
            elif write.kind == "occupants":
                assert write.occupants is not None
                if not await rooms.set_occupants(name, write.occupants, write.node):
                    room = self.rooms.get(jid)  # deleted meanwhile (a race with a release): all of it
                    if room is not None:
                        await rooms.put(self._record(room, self.me))
            else:  # release: only if nobody took the room over in between
                assert write.occupants is not None
                record = await rooms.get(name)
                if record is not None and record.node in (self.me, None):
                    await rooms.set_occupants(name, write.occupants, None)
        except Exception:
            log.exception("muc %s: storing %s failed", self.me, jid)
        finally:
            self._writing = None
            self._committed[jid] = max(self._committed.get(jid, 0), seq)
            progress, self._progress = self._progress, trio.Event()
            progress.set()

    async def _wait_written(self, jid: JID, seq: int) -> None:
        """Until the write ``seq`` of ``jid`` (or a later one that includes it) has committed."""
        while self._committed.get(jid, 0) < seq:
            await self._progress.wait()

    async def _wait_idle(self, jid: JID) -> None:
        """Until no write for ``jid`` is queued or in progress (a load must read the latest)."""
        while jid in self._dirty or self._writing == jid:
            await self._progress.wait()

    async def flush(self) -> None:
        """Until every write queued so far has committed (tests)."""
        while self._dirty or self._writing is not None:
            await self._progress.wait()


def _join_errors_echo_x(out: list[Element]) -> None:
    """COMPAT: a refused join carries ``<x xmlns='http://jabber.org/protocol/muc'/>`` back, as in the
    examples of XEP-0045 §7.2; slixmpp recognises a join error only by it (``muc_join``)."""
    for i, el in enumerate(out):
        if el.name == "presence" and el.attrs.get("type") == "error" and el.find("x", ns.MUC) is None:
            fixed = el.copy()
            fixed.children.insert(0, Element("x", ns.MUC))
            out[i] = fixed


async def _await(awaitable: Awaitable[Any]) -> None:
    await awaitable


async def _gather(pending: list[Awaitable[Any]]) -> None:
    for p in pending:
        if inspect.isawaitable(p):
            await p


def register(hub: Hub, ctx: NodeContext) -> MUCService | None:
    """Run the conference service when ``[muc] domain`` is set (else nothing is hooked)."""
    if ctx.config.muc.domain is None:
        return None
    service = MUCService(ctx)
    for kind in ("message", "presence", "iq"):
        hub.hook(f"{kind}/remote", service.on_stanza)
    hub.hook("mesh/members", service.on_members)
    hub.hook("session/end", service.on_session_end)
    hub.hook("disco-items/host", service.disco_items_host)
    hub.hook(SERVICE_EVENT, lambda _none: service)
    return service


def service_of(ctx: NodeContext) -> MUCService | None:
    """The node's conference service, None when ``[muc] domain`` is unset (tests, the admin API)."""
    service = ctx.hub.fire(SERVICE_EVENT, None)
    return service if isinstance(service, MUCService) else None
