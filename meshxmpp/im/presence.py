"""Availability presence (RFC 6121 section 4): broadcast, probes, directed presence, unavailable.

* ``presence/broadcast`` (a client's presence without 'to'): validates priority, updates the
  session, broadcasts to the subscribers (roster items "from"/"both") and to the user's other
  available resources. The first one (initial presence) also probes the contacts the user is
  subscribed to, shows the user's other resources to the new one, delivers the subscription
  requests waiting for an answer and fires ``presence/initial`` (offline messages hook it).
* ``pre-presence/{bare,full,host}``: remembers directed presence (``session.directed``).
* ``presence/bare``: delivers available/unavailable presence to the user's available resources,
  only from contacts the user is subscribed to (or has sent directed presence to); answers probes.
* ``presence/full``: answers probes sent to a full JID (other presence: the router delivers it).
* ``session/end``: unavailable to subscribers, directed-presence targets and own resources.

Subscription stanzas are ``im.roster``'s. All hooks at priority 0.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Any

from meshxmpp.im._stanzas import last_presence, loads, presence, readdress, route
from meshxmpp.jid import JID
from meshxmpp.xml import ns

if TYPE_CHECKING:
    from meshxmpp.c2s.session import Session
    from meshxmpp.context import NodeContext
    from meshxmpp.hub import Hub
    from meshxmpp.routing.router import StanzaEvent
    from meshxmpp.storage.base import RosterItem
    from meshxmpp.xml.element import Element

log = logging.getLogger("meshxmpp.im.presence")

SHOW_VALUES = frozenset({"away", "chat", "dnd", "xa"})
_INTEGER = re.compile(r"[+-]?[0-9]{1,10}")
AVAILABILITY = (None, "unavailable")


class InvalidPresence(ValueError):
    pass


def parse_availability(el: Element) -> tuple[int, str | None]:
    """Priority and show of an available presence (RFC 6121 4.7.2); raises InvalidPresence."""
    priority = 0
    prio_el = el.find("priority", ns.CLIENT)
    if prio_el is not None:
        text = prio_el.text.strip()
        if not _INTEGER.fullmatch(text):
            raise InvalidPresence("priority is not an integer")
        priority = int(text)
        if not -128 <= priority <= 127:
            raise InvalidPresence("priority out of range -128..127")
    show_el = el.find("show", ns.CLIENT)
    show = show_el.text.strip() if show_el is not None else None
    return priority, show if show in SHOW_VALUES else None


def subscribers(items: list[RosterItem]) -> list[str]:
    return [i.jid for i in items if i.subscription in ("from", "both")]


def subscribed_to(items: list[RosterItem]) -> list[str]:
    return [i.jid for i in items if i.subscription in ("to", "both")]


class Presence:
    def __init__(self, ctx: NodeContext) -> None:
        self.ctx = ctx

    # from our own clients ----------------------------------------------------------------------

    def broadcast(self, event: StanzaEvent) -> Any:
        session = event.origin
        el = event.stanza
        type_ = el.get("type")
        if session is None or type_ not in AVAILABILITY:
            return True  # subscription stanzas, probes and errors need a 'to'
        if type_ is None:
            try:
                priority, show = parse_availability(el)
            except InvalidPresence as e:
                self.ctx.router.deliver(session, el.error_reply("modify", "bad-request", str(e)))
                return True
            return self._available(session, el, priority, show)
        return self._unavailable(session, el)

    async def _available(self, session: Session, el: Element, priority: int, show: str | None) -> None:
        initial = not session.available
        session.available, session.priority, session.show = True, priority, show
        session.presence = el  # as the client sent it, 'from' stamped, no 'to'
        self.ctx.router.session_changed(session)
        user = session.bare
        items = await self.ctx.storage.rosters.items(str(user))
        for contact in subscribers(items):
            await route(self.ctx, readdress(session.presence, to=contact))
        others = [s for s in self.ctx.router.available_of(user) if s is not session]
        for other in others:
            self.ctx.router.deliver(other, readdress(session.presence, to=str(other.jid)))
        if not initial:
            return
        for contact in subscribed_to(items):
            await route(self.ctx, presence("probe", str(session.jid), contact))
        for other in others:
            if (shown := last_presence(other)) is not None:
                self.ctx.router.deliver(session, readdress(shown, to=str(session.jid)))
        # Subscription requests still waiting for an answer (RFC 6121 3.1.3).
        for item in items:
            if item.pending_in:
                self.ctx.router.deliver(session, _pending_request(item, user))
        await self.ctx.hub.fire_all("presence/initial", session)

    async def _unavailable(self, session: Session, el: Element | None) -> None:
        was_available = session.available
        session.available, session.presence = False, None
        if not session.ended:
            self.ctx.router.session_changed(session)
        user = session.bare
        out = presence("unavailable", str(session.jid), None) if el is None else el
        reached: set[JID] = set()
        if was_available:
            items = await self.ctx.storage.rosters.items(str(user))
            for contact in subscribers(items):
                await route(self.ctx, readdress(out, to=contact))
            reached = {_bare(c) for c in subscribers(items)}
            for other in self.ctx.router.available_of(user):
                if other is not session and other.jid != session.jid:
                    self.ctx.router.deliver(other, readdress(out, to=str(other.jid)))
        # Directed presence ends too (RFC 6121 4.6.3); a bare subscriber already got it.
        directed, session.directed = set(session.directed), set()
        for target in sorted(directed, key=str):
            if target.bare not in reached and target.bare != user:
                await route(self.ctx, readdress(out, to=str(target)))

    def directed(self, event: StanzaEvent) -> Any:
        """pre-presence/*: remember directed available presence, forget it on unavailable."""
        session, to = event.origin, event.to
        type_ = event.stanza.get("type")
        if session is None or to is None or to.bare == session.bare:
            return None
        if type_ is None:
            session.directed.add(to)
        elif type_ in ("unavailable", "error"):
            session.directed.discard(to)
        return None  # the router goes on and delivers it

    async def session_end(self, session: Session) -> None:
        if session.available or session.directed:
            await self._unavailable(session, None)

    # for our users ---------------------------------------------------------------------------

    def to_bare(self, event: StanzaEvent) -> Any:
        type_ = event.stanza.get("type")
        if type_ == "probe":
            return self._probe(event)
        if type_ in AVAILABILITY or type_ == "error":
            return self._deliver_bare(event, type_)
        return None  # subscription stanzas: im.roster

    def to_full(self, event: StanzaEvent) -> Any:
        if event.stanza.get("type") == "probe":
            return self._probe(event)
        return None  # the router delivers the rest to that resource

    async def _deliver_bare(self, event: StanzaEvent, type_: str | None) -> bool:
        assert event.to is not None
        user, sender = event.to.bare, event.sender
        sessions = self.ctx.router.available_of(user)
        if not sessions:
            return True
        if type_ is None and not self._may_see(user, sender, sessions):
            item = await self.ctx.storage.rosters.get(str(user), str(sender.bare))
            if item is None or item.subscription not in ("to", "both"):
                return True  # not subscribed to that contact: not delivered
            sessions = self.ctx.router.available_of(user)
        for session in sessions:
            if session.jid != sender:
                self.ctx.router.deliver(session, event.stanza)
        return True

    def _may_see(self, user: JID, sender: JID, sessions: list[Session]) -> bool:
        """Presence we accept without a subscription: our own, a server's, or an answer to ours."""
        if sender.bare == user or sender.local is None:
            return True
        # COMPAT: directed presence is remembered by the sender's own node only (not replicated).
        return any(sender in d or sender.bare in d for s in sessions if (d := getattr(s, "directed", None)))

    async def _probe(self, event: StanzaEvent) -> bool:
        assert event.to is not None
        user, prober = event.to.bare, event.sender
        if prober.bare != user:
            if not await self.ctx.storage.accounts.exists(str(user)):
                await route(self.ctx, presence("unsubscribed", str(user), str(prober.bare)))
                return True
            item = await self.ctx.storage.rosters.get(str(user), str(prober.bare))
            if item is None or item.subscription not in ("from", "both"):
                # RFC 6121 4.3.2: reveal nothing; "unsubscribed" lets the prober fix its roster.
                await route(self.ctx, presence("unsubscribed", str(user), str(prober.bare)))
                return True
        for session in self.ctx.router.available_of(user):
            if (shown := last_presence(session)) is not None and session.jid != prober:
                await route(self.ctx, readdress(shown, from_=str(session.jid), to=str(prober)))
        # No available resource: we send nothing (RFC 6121 4.3.2 allows it).
        return True


async def announce_lost(ctx: NodeContext, record: Any) -> None:
    """The node that held ``record``'s available session is gone: tell its subscribers and the user's
    other resources that it is unavailable (one survivor calls this, see mesh.core.SessionsLost)."""
    await _announce(ctx, record.jid, presence("unavailable", str(record.jid), None))


async def announce_back(ctx: NodeContext, record: Any) -> None:
    """A session given up for lost (its node was wrongly declared dead, or cut off by a partition) is
    back: the survivor that announced it unavailable sends its last presence again."""
    shown = last_presence(record)
    if shown is not None:
        await _announce(ctx, record.jid, readdress(shown, from_=str(record.jid)))


async def _announce(ctx: NodeContext, jid: JID, out: Element) -> None:
    user = jid.bare
    items = await ctx.storage.rosters.items(str(user))
    for contact in subscribers(items):
        await route(ctx, readdress(out, to=contact))
    for other in ctx.router.available_of(user):
        if other.jid != jid:
            ctx.router.deliver(other, readdress(out, to=str(other.jid)))


def _bare(jid: str) -> JID:
    return JID.parse(jid).bare


def _pending_request(item: RosterItem, user: JID) -> Element:
    if item.pending_in_stanza:
        try:
            return loads(item.pending_in_stanza)
        except ValueError:
            log.warning("unreadable pending subscription request from %s for %s", item.jid, user)
    return presence("subscribe", item.jid, str(user))


def register(hub: Hub, ctx: NodeContext) -> Presence:
    feature = Presence(ctx)
    hub.hook("presence/broadcast", feature.broadcast)
    for dest in ("bare", "full", "host"):
        hub.hook(f"pre-presence/{dest}", feature.directed)
    hub.hook("presence/bare", feature.to_bare)
    hub.hook("presence/full", feature.to_full)
    hub.hook("session/end", feature.session_end)
    return feature
