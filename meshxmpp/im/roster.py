"""Rosters (RFC 6121 section 2) and presence subscriptions (section 3): the stored side of both.

Roster get/set/remove from the user's own client, roster pushes to the user's interested
resources, and the subscription stanzas in both directions: the state change itself is the pure
table of ``im.subscription``; this module loads the roster item, applies the row, stores the
result and sends what the row says. Availability presence (broadcast, probes) is ``im.presence``.

Hooks (priority 0): ``iq-get/self/jabber:iq:roster``, ``iq-set/self/jabber:iq:roster``,
``pre-presence/bare`` and ``pre-presence/full`` (outbound subscription stanzas),
``presence/bare`` and ``presence/full`` (inbound subscription stanzas), ``disco-features/host``.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
from typing import TYPE_CHECKING, Any

from meshxmpp.im import subscription as sub
from meshxmpp.im._stanzas import KeyedLocks, dumps, last_presence, presence, readdress, route
from meshxmpp.jid import JID, InvalidJID
from meshxmpp.storage.base import RosterItem
from meshxmpp.xml import ns
from meshxmpp.xml.element import Element

if TYPE_CHECKING:
    from meshxmpp.context import NodeContext
    from meshxmpp.hub import Hub
    from meshxmpp.routing.router import StanzaEvent

log = logging.getLogger("meshxmpp.im.roster")

SUBSCRIPTION_TYPES = frozenset(sub.KINDS)
MAX_TEXT = 1023  # longest roster item name or group name we store (RFC 6121 2.3.3: not-acceptable)


# -- pure helpers: item <-> state, item <-> XML --------------------------------------------------


def item_state(item: RosterItem | None) -> str:
    if item is None:
        return sub.NONE
    return sub.state_of(item.subscription, item.ask, item.pending_in)


def with_state(item: RosterItem, state: str) -> RosterItem:
    f = sub.flags_of(state)
    return dataclasses.replace(
        item,
        subscription=f.subscription,
        ask=f.ask,
        pending_in=f.pending_in,
        pending_in_stanza=item.pending_in_stanza if f.pending_in else None,
    )


def is_empty(item: RosterItem) -> bool:
    """A hidden item that no longer holds anything: delete it instead of storing it."""
    return item.hidden and item_state(item) == sub.NONE and not item.approved


def item_element(item: RosterItem) -> Element:
    attrs = {
        "jid": item.jid,
        "subscription": item.subscription if item.subscription in ("none", "to", "from", "both") else "none",
    }
    if item.name:
        attrs["name"] = item.name
    if item.ask and item.subscription in ("none", "from"):
        attrs["ask"] = "subscribe"
    el = Element("item", ns.ROSTER, attrs)
    for group in item.groups:
        el.add("group", ns.ROSTER, text=group)
    return el


def push_iq(to: JID, payload: Element) -> Element:
    iq = Element("iq", ns.CLIENT, {"type": "set", "id": "push" + secrets.token_hex(4), "to": str(to)})
    iq.add("query", ns.ROSTER).append(payload)
    return iq


def push(ctx: NodeContext, user: JID, item: RosterItem | None, jid: str) -> None:
    """Roster push of ``item`` (``None``/hidden: removed) to every interested resource of ``user``."""
    sessions = [s for s in ctx.router.sessions_of(user) if s.interested and not getattr(s, "closed", False)]
    for session in sessions:
        if item is None or item.hidden:
            payload = Element("item", ns.ROSTER, {"jid": jid, "subscription": "remove"})
        else:
            payload = item_element(item)
        ctx.router.deliver(session, push_iq(session.jid, payload))


class RosterSetError(Exception):
    def __init__(self, error_type: str, condition: str, text: str | None = None) -> None:
        super().__init__(condition)
        self.error_type, self.condition, self.text = error_type, condition, text


@dataclasses.dataclass(frozen=True, slots=True)
class RosterSet:
    jid: str
    remove: bool
    name: str | None
    groups: tuple[str, ...]


def parse_roster_set(query: Element, user: JID) -> RosterSet:
    """Validate a roster set (RFC 6121 2.3.2, 2.3.3); raises RosterSetError."""
    items = [c for c in query.children if isinstance(c, Element)]
    if len(items) != 1 or items[0].name != "item" or items[0].ns != ns.ROSTER:
        raise RosterSetError("modify", "bad-request", "A roster set holds exactly one item")
    item = items[0]
    raw = item.get("jid")
    if not raw:
        raise RosterSetError("modify", "bad-request", "The item has no jid")
    try:
        jid = JID.parse(raw)
    except InvalidJID:
        raise RosterSetError("modify", "jid-malformed") from None
    if jid.resource is not None:
        raise RosterSetError("modify", "bad-request", "Roster items are bare JIDs")
    if jid == user:
        raise RosterSetError("cancel", "not-allowed", "Your own JID is not a roster item")
    # 'subscription' values other than "remove" and any 'ask' are ignored (RFC 6121 2.1.2.5, 2.1.2.2).
    if item.get("subscription") == "remove":
        return RosterSet(str(jid), True, None, ())
    name = item.get("name") or None
    if name is not None and len(name) > MAX_TEXT:
        raise RosterSetError("modify", "not-acceptable", "Name too long")
    groups: list[str] = []
    for group in item.findall("group", ns.ROSTER):
        text = group.text
        if not text:
            raise RosterSetError("modify", "not-acceptable", "Empty group name")
        if len(text) > MAX_TEXT:
            raise RosterSetError("modify", "not-acceptable", "Group name too long")
        if text in groups:
            raise RosterSetError("modify", "bad-request", "Duplicate group")
        groups.append(text)
    return RosterSet(str(jid), False, name, tuple(groups))


# -- the feature ---------------------------------------------------------------------------------


class Roster:
    def __init__(self, ctx: NodeContext) -> None:
        self.ctx = ctx
        self.locks = KeyedLocks()

    # roster iq --------------------------------------------------------------------------------

    async def roster_get(self, event: StanzaEvent) -> bool:
        origin = event.origin
        if origin is None:
            return False
        # Under the lock no change lands between the read and ``interested``: the client gets
        # every later change as a push and none is lost in between.
        async with self.locks(str(origin.bare)):
            items = await self.ctx.storage.rosters.items(str(origin.bare))
            reply = event.stanza.reply()
            query = reply.add("query", ns.ROSTER)
            for item in items:
                if not item.hidden:
                    query.append(item_element(item))
            origin.interested = True
            self.ctx.router.session_changed(origin)
            self.ctx.router.deliver(origin, reply)
        return True

    async def roster_set(self, event: StanzaEvent) -> bool:
        origin = event.origin
        if origin is None:
            return False
        el = event.stanza
        query = el.find("query", ns.ROSTER)
        assert query is not None
        user = origin.bare
        try:
            change = parse_roster_set(query, user)
        except RosterSetError as e:
            self.ctx.router.deliver(origin, el.error_reply(e.error_type, e.condition, e.text))
            return True
        if change.remove:
            await self._remove(event, user, change.jid)
            return True
        async with self.locks(str(user)):
            item = await self.ctx.storage.rosters.get(str(user), change.jid)
            if item is None:
                item = RosterItem(jid=change.jid)
            item = dataclasses.replace(item, name=change.name, groups=change.groups, hidden=False)
            await self.ctx.storage.rosters.put(str(user), item)
            self.ctx.router.deliver(origin, el.reply())
            push(self.ctx, user, item, change.jid)
        return True

    async def _remove(self, event: StanzaEvent, user: JID, jid: str) -> None:
        origin = event.origin
        assert origin is not None
        async with self.locks(str(user)):
            item = await self.ctx.storage.rosters.get(str(user), jid)
            if item is None or item.hidden:
                self.ctx.router.deliver(origin, event.stanza.error_reply("cancel", "item-not-found"))
                return
            await self.ctx.storage.rosters.remove(str(user), jid)
            self.ctx.router.deliver(origin, event.stanza.reply())
            push(self.ctx, user, None, jid)
        # RFC 6121 2.5.2: cancel both directions with the contact, as the contact's server
        # sees them (our side of the item is gone already).
        state = sub.flags_of(item_state(item))
        if state.subscription in ("to", "both") or state.ask:
            await route(self.ctx, presence("unsubscribe", str(user), jid))
        if state.subscription in ("from", "both") or state.pending_in:
            await route(self.ctx, presence("unsubscribed", str(user), jid))
        if state.subscription in ("from", "both"):
            await self._unavailable_to(user, jid)

    # subscription stanzas --------------------------------------------------------------------

    def outbound(self, event: StanzaEvent) -> Any:
        """pre-presence/{bare,full}: a subscription stanza from one of our users."""
        kind = event.stanza.get("type")
        if kind not in SUBSCRIPTION_TYPES or event.origin is None or event.to is None:
            return None
        return self._outbound(event, kind)

    async def _outbound(self, event: StanzaEvent, kind: str) -> None:
        assert event.to is not None
        user, contact = event.sender.bare, event.to.bare
        if user == contact:
            return  # one's own presence needs no subscription
        async with self.locks(str(user)):
            old_item = await self.ctx.storage.rosters.get(str(user), str(contact))
            old = item_state(old_item)
            out = sub.transition(old, kind, "outbound")
            item = with_state(old_item or RosterItem(jid=str(contact), hidden=True), out.state)
            visible_before = old_item is not None and not old_item.hidden
            if kind == "subscribe" or kind == "subscribed" and out.forward:
                # Asking adds the contact to the roster, and so does approving (RFC 6121 3.1.5).
                item = dataclasses.replace(item, hidden=False)
            await self._store(user, old_item, item)
            if not item.hidden and (out.push or not visible_before):
                push(self.ctx, user, item, item.jid)
        if not out.forward:
            return
        # RFC 6121 3.1.2 ff: the server stamps both addresses as bare JIDs.
        await route(self.ctx, readdress(event.stanza, from_=str(user), to=str(contact)))
        if kind == "subscribed":
            # RFC 6121 3.1.5: the new subscriber gets the user's current presence.
            for session in self.ctx.router.available_of(user):
                if (shown := last_presence(session)) is not None:
                    await route(self.ctx, readdress(shown, from_=str(session.jid), to=str(contact)))
        elif kind == "unsubscribed" and sub.flags_of(old).subscription in ("from", "both"):
            await self._unavailable_to(user, str(contact))  # RFC 6121 3.2.2

    def inbound(self, event: StanzaEvent) -> Any:
        """presence/{bare,full}: a subscription stanza for one of our users."""
        kind = event.stanza.get("type")
        if kind not in SUBSCRIPTION_TYPES or event.to is None:
            return None
        return self._inbound(event, kind)

    async def _inbound(self, event: StanzaEvent, kind: str) -> bool:
        assert event.to is not None
        user, contact = event.to.bare, event.sender.bare
        if user == contact or contact.local is None and contact.domain == self.ctx.domain:
            return True
        if not await self.ctx.storage.accounts.exists(str(user)):
            # RFC 6121 8.5.1: no such user; a subscription request is answered "unsubscribed".
            if kind == "subscribe":
                await route(self.ctx, presence("unsubscribed", str(user), str(contact)))
            return True
        stanza = readdress(event.stanza, from_=str(contact), to=str(user))
        async with self.locks(str(user)):
            old_item = await self.ctx.storage.rosters.get(str(user), str(contact))
            old = item_state(old_item)
            out = sub.transition(old, kind, "inbound")
            item = with_state(old_item or RosterItem(jid=str(contact), hidden=True), out.state)
            if kind == "subscribe" and out.forward:
                # Kept until answered: delivered again at each initial presence (RFC 6121 3.1.3).
                item = dataclasses.replace(item, pending_in_stanza=dumps(stanza))
            await self._store(user, old_item, item)
            if out.push and not item.hidden:
                push(self.ctx, user, item, item.jid)
            if out.forward:
                for session in self.ctx.router.available_of(user):
                    self.ctx.router.deliver(session, stanza)
        if out.auto_reply is not None:
            await route(self.ctx, presence(out.auto_reply, str(user), str(contact)))
            for session in self.ctx.router.available_of(user):
                if (shown := last_presence(session)) is not None:
                    await route(self.ctx, readdress(shown, from_=str(session.jid), to=str(contact)))
        if kind == "unsubscribe" and out.forward and sub.flags_of(old).subscription in ("from", "both"):
            await self._unavailable_to(user, str(contact))  # RFC 6121 3.3.3
        return True

    async def _store(self, user: JID, old: RosterItem | None, new: RosterItem) -> None:
        if is_empty(new):
            if old is not None:
                await self.ctx.storage.rosters.remove(str(user), new.jid)
        elif new != old:
            await self.ctx.storage.rosters.put(str(user), new)

    async def _unavailable_to(self, user: JID, contact: str) -> None:
        """The contact no longer sees the user: unavailable from each available resource."""
        for session in self.ctx.router.available_of(user):
            await route(self.ctx, presence("unavailable", str(session.jid), contact))

    # disco ------------------------------------------------------------------------------------

    @staticmethod
    def features(found: set[str]) -> None:
        found.add(ns.ROSTER)


def register(hub: Hub, ctx: NodeContext) -> Roster:
    roster = Roster(ctx)
    hub.hook(f"iq-get/self/{ns.ROSTER}", roster.roster_get)
    hub.hook(f"iq-set/self/{ns.ROSTER}", roster.roster_set)
    for dest in ("bare", "full"):
        hub.hook(f"pre-presence/{dest}", roster.outbound)
        hub.hook(f"presence/{dest}", roster.inbound)
    hub.hook("disco-features/host", roster.features)
    return roster
