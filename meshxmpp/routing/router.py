"""The router: turns a stanza into hub events and executes the policy engine's decisions.

It decides nothing itself about who receives a message: ``routing.policy.decide`` does, as a pure
function; the router only gathers the facts, asks, and carries out the actions (deliver, carbon,
store offline, bounce, drop). The hot path (a message to a bound recipient) is plain function calls
with no ``await``; only work that touches storage returns an awaitable for the caller to await.

Message Carbons (XEP-0280): ``decide`` includes the ``<received/>`` copies of an inbound message;
for a message a local client sends, the router also asks ``decide_sent_carbons`` for the ``<sent/>``
copies, but only for a user with a carbons-enabled session (``set_carbons`` counts them per user),
so a message from anyone else costs one truthiness check of an (often empty) dict.

In a mesh (``router.mesh`` set by the node to its `mesh.service.MeshService`), the recipients the
policy sees are this node's sessions plus the other nodes' records from the replicated directory
(`mesh.directory.SessionRecord`, a ``SessionLike`` too); a delivery to a remote record is handed to
``mesh.forward``. With no mesh, each of those spots costs one ``is None`` check.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from meshxmpp.jid import JID, InvalidJID
from meshxmpp.mesh._records import SessionRecord
from meshxmpp.routing import policy
from meshxmpp.routing.facts import facts_from_element
from meshxmpp.xml import ns
from meshxmpp.xml.element import Element

if TYPE_CHECKING:
    from meshxmpp.c2s.session import Session
    from meshxmpp.hub import Hub
    from meshxmpp.mesh.service import MeshService
    from meshxmpp.routing.table import SessionRegistry
    from meshxmpp.storage.base import Accounts

log = logging.getLogger("meshxmpp.router")

FALLBACK = -1000
_KINDS = frozenset({"message", "presence", "iq"})
_IQ_TYPES = frozenset({"get", "set", "result", "error"})


@dataclass(frozen=True, slots=True)
class StanzaEvent:
    stanza: Element
    origin: Session | None
    to: JID | None
    sender: JID


class Router:
    def __init__(
        self,
        *,
        hub: Hub,
        sessions: SessionRegistry,
        domain: str,
        accounts: Accounts,
        policy_config: policy.PolicyConfig,
    ) -> None:
        self.hub = hub
        self.sessions = sessions
        self.domain = domain
        self.accounts = accounts
        self.policy_config = policy_config
        self.stats: dict[str, int] = {}
        # XEP-0280: bare JID -> how many of its sessions enabled carbons (absent when none). Only a
        # gate for the sent-carbon path; who gets a copy is read from the sessions by the policy.
        self._carbons: dict[JID, int] = {}
        #: The mesh this node is part of (set by the node), or None for a single node.
        self.mesh: MeshService | None = None
        for name, handler in (
            ("message/full", self._message_to_user),
            ("message/bare", self._message_to_user),
            ("message/host", self._to_host),
            ("presence/full", self._presence_full),
            ("presence/bare", _drop),
            ("presence/host", _drop),
            ("presence/broadcast", _drop),
            ("iq/full", self._iq_full),
            ("iq/bare", self._to_host),
            ("iq/host", self._to_host),
            ("iq/self", self._to_host),
        ):
            hub.hook(name, handler, FALLBACK)

    # -- entry points ---------------------------------------------------------------------------

    def route(self, el: Element, origin: Session | None) -> Awaitable[None] | None:
        """Route one stanza. ``origin`` is the local client session it came from, if any."""
        kind = el.name
        if kind not in _KINDS:
            if origin is not None:
                origin.close("unsupported-stanza-type")
            return None
        if origin is not None:
            sender = origin.jid
        else:
            try:
                sender = JID.parse(el.get("from") or "")
            except InvalidJID:
                log.debug("dropping stanza without a valid from: %r", el)
                return None
        if kind == "iq" and not self._valid_iq(el, sender):
            return None
        to_s = el.attrs.get("to")
        to: JID | None
        if to_s is None:
            to = None
        else:
            try:
                to = JID.parse(to_s)
            except InvalidJID:
                self.bounce(el, "modify", "jid-malformed", from_host=True)
                return None
        if origin is not None:
            result = self._from_client(el, kind, origin, sender, to)
        else:
            result = self._inbound(StanzaEvent(el, origin, to, sender), kind)
        return result if inspect.isawaitable(result) else None

    def deliver(self, session: Session | SessionRecord, el: Element) -> None:
        """Send ``el`` to one session: a local one's outbox, or over the mesh to a remote record's node
        (a stanza that cannot be forwarded is handled as if that session were gone)."""
        if type(session) is SessionRecord:
            self._forward(session, el)
        else:
            session.send(el)  # type: ignore[union-attr]

    def sessions_of(self, bare: JID) -> list[Any]:
        """Every session of ``bare`` in the service: this node's, then the other nodes' records."""
        sessions: list[Any] = self.sessions.of(bare)
        if self.mesh is not None:
            sessions += self.mesh.remote_of(bare)
        return sessions

    def available_of(self, bare: JID) -> list[Any]:
        """The available sessions of ``bare`` in the service (local ones first)."""
        sessions: list[Any] = self.sessions.available_of(bare)
        if self.mesh is not None:
            sessions += [r for r in self.mesh.remote_of(bare) if r.available]
        return sessions

    def session_at(self, full: JID) -> Session | SessionRecord | None:
        """The session bound to ``full`` here, else its record on another node."""
        session = self.sessions.get(full)
        if session is None and self.mesh is not None:
            return self.mesh.remote_get(full)
        return session

    def session_changed(self, session: Session) -> None:
        """A local session's presence, priority, carbons or roster interest changed (the mesh
        replicates what the routing policy reads)."""
        if self.mesh is not None:
            self.mesh.session_changed(session)

    def _forward(self, record: SessionRecord, el: Element, shared: bool = False) -> None:
        assert self.mesh is not None
        if self.mesh.forward(record, el, shared=shared):
            return
        # The node cannot take it now (dead, unknown, backlog full): as if the session were gone.
        if el.name == "message" and el.attrs.get("type", "normal") in ("chat", "normal"):
            event = StanzaEvent(el, None, record.jid.bare, JID.parse(el.attrs.get("from") or self.domain))
            pending = self.hub.fire("message/offline", event)
            if pending and inspect.isawaitable(pending):
                self.mesh.spawn(pending)
            elif not pending:
                self.bounce(el, "cancel", "service-unavailable")
        elif el.name == "iq" and el.attrs.get("type") in ("get", "set"):
            self.bounce(el, "cancel", "service-unavailable")

    def set_carbons(self, session: Session, enabled: bool) -> None:
        """XEP-0280 enable/disable for a bound session: sets ``session.carbons`` and keeps the
        per-user count that gates sent carbons. Set the flag only through here."""
        if session.carbons == enabled:
            return
        session.carbons = enabled
        if not session.ended:  # else session_ended already took it out of the count
            self._count_carbons(session.bare, 1 if enabled else -1)
            if self.mesh is not None:
                self.mesh.session_changed(session)

    def _count_carbons(self, bare: JID, delta: int) -> None:
        count = self._carbons.get(bare, 0) + delta
        if count > 0:
            self._carbons[bare] = count
        else:
            self._carbons.pop(bare, None)

    async def session_ended(self, session: Session) -> None:
        """The connection of ``session`` ended (cleanly or not): unregister it, tell the features.

        Runs once per session, also for one that a newer login with the same full JID replaced
        (it is no longer in the registry, but its contacts must still see it leave)."""
        if session.ended or not hasattr(session, "jid"):
            return
        session.ended = True
        if session.carbons:
            self._count_carbons(session.bare, -1)
            if self.mesh is not None:
                self.mesh.session_changed(session)
        self.sessions.unbind(session)
        await self.hub.fire_all("session/end", session)

    def bounce(self, el: Element, error_type: str, condition: str, text: str | None = None, *,
               from_host: bool = False) -> None:
        """Send an error reply for ``el`` to its sender; errors themselves are never bounced.

        ``from_host``: the error comes from our domain (the original 'to' was unusable)."""
        if el.attrs.get("type") == "error" or not el.attrs.get("from"):
            return
        reply = el.error_reply(error_type, condition, text)
        if from_host or not reply.attrs.get("from"):
            reply.set("from", self.domain)
        self.route(reply, None)

    # -- dispatch --------------------------------------------------------------------------------

    def _valid_iq(self, el: Element, sender: JID) -> bool:
        type_ = el.attrs.get("type")
        if type_ not in _IQ_TYPES or "id" not in el.attrs:
            self.bounce(el, "modify", "bad-request")
            return False
        if type_ in ("get", "set") and sum(1 for c in el.children if isinstance(c, Element)) != 1:
            self.bounce(el, "modify", "bad-request")
            return False
        return True

    def _dest(self, to: JID) -> str:
        if to.local is None and to.resource is None:
            return "host"
        return "bare" if to.resource is None else "full"

    def _from_client(self, el: Element, kind: str, origin: Session, sender: JID, to: JID | None) -> Any:
        if to is None:
            if kind == "presence":
                return self.hub.fire("presence/broadcast", StanzaEvent(el, origin, None, sender))
            if kind == "iq":
                return self._fire_iq(StanzaEvent(el, origin, None, sender), "self")
            # RFC 6120 10.3.1: a message without 'to' is for the sender's own bare JID.
            to = sender.bare
        elif kind == "iq" and to == sender.bare:
            return self._fire_iq(StanzaEvent(el, origin, to, sender), "self")
        event = StanzaEvent(el, origin, to, sender)
        if to.domain == self.domain:
            handled = self.hub.fire(f"pre-{kind}/{self._dest(to)}", event)
            if handled:
                return handled
        if kind == "message" and (self._carbons and origin.bare in self._carbons or (
                self.mesh is not None and self.mesh.any_carbons(origin.bare))):
            self._sent_carbons(event, origin)
        return self._inbound(event, kind)

    def _sent_carbons(self, event: StanzaEvent, origin: Session) -> None:
        # XEP-0280 7: the sender's other carbons-enabled sessions get a <sent/> copy. A message to
        # the user's own account gets none here: `decide` gives its copies (never two per session).
        facts = facts_from_element(event.stanza, event.to, event.sender)
        self._execute(event, policy.decide_sent_carbons(facts, self.sessions_of(origin.bare), origin.jid))

    def _fire_iq(self, event: StanzaEvent, dest: str) -> Any:
        el = event.stanza
        type_ = el.attrs["type"]
        if type_ in ("get", "set"):
            child = next(c for c in el.children if isinstance(c, Element))
            handled = self.hub.fire(f"iq-{type_}/{dest}/{child.ns}", event)
            if handled:
                return handled
        return self.hub.fire(f"iq/{dest}", event)

    def _inbound(self, event: StanzaEvent, kind: str) -> Any:
        to = event.to
        assert to is not None
        if to.domain != self.domain:
            # No server-to-server yet: every other domain is unreachable (RFC 6120 10.4.3).
            handled = self.hub.fire(f"{kind}/remote", event)
            if handled:
                return handled
            self.bounce(event.stanza, "cancel", "remote-server-not-found")
            return None
        dest = self._dest(to)
        if kind == "iq" and dest != "full":
            return self._fire_iq(event, dest)
        return self.hub.fire(f"{kind}/{dest}", event)

    # -- fallback handlers: delivery by policy ----------------------------------------------------

    def _message_to_user(self, event: StanzaEvent) -> Any:
        to = event.to
        assert to is not None
        sessions = self.sessions.of(to.bare)
        if self.mesh is not None:
            sessions = sessions + self.mesh.remote_of(to.bare)  # type: ignore[operator]
        if sessions:
            # Bound sessions but none that takes it (no presence, negative priorities) can still
            # mean "store offline": that awaitable goes back to the caller, never dropped.
            pending = self._execute(event, policy.decide(facts_from_element(event.stanza, to, event.sender),
                                                         sessions, self.policy_config, account_exists=True))
            return pending or True
        return self._message_no_sessions(event)

    async def _message_no_sessions(self, event: StanzaEvent) -> None:
        to = event.to
        assert to is not None
        exists = await self.accounts.exists(str(to.bare))
        # Re-read: a session may have bound while we waited on storage.
        sessions = self.sessions_of(to.bare)
        decision = policy.decide(facts_from_element(event.stanza, to, event.sender), sessions,
                                 self.policy_config, account_exists=exists)
        result = self._execute(event, decision)
        if inspect.isawaitable(result):
            await result

    def _execute(self, event: StanzaEvent, decision: policy.Decision) -> Any:
        self.stats[decision.rule] = self.stats.get(decision.rule, 0) + 1
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s -> %s", event.stanza.attrs.get("to"), policy.explain(decision))
        pending = None
        el = event.stanza
        payload: Element | None = None  # <received|sent><forwarded>el</forwarded></…>, built once
        for action in decision.actions:
            match action:
                case policy.Deliver(jid=jid):
                    session = self.sessions.get(jid)
                    if session is not None:
                        session.send(el)
                    elif self.mesh is not None and (record := self.mesh.remote_get(jid)) is not None:
                        self._forward(record, el, len(decision.actions) > 1)
                case policy.DeliverCarbon(jid=jid, direction=direction):
                    target = self.session_at(jid)
                    if target is not None:
                        if payload is None or payload.name != direction:
                            payload = carbon_payload(el, direction)
                        self.deliver(target, carbon_wrapper(payload, target.jid, el))
                case policy.StoreOffline():
                    pending = self.hub.fire("message/offline", event)
                    if not pending:
                        self.bounce(el, "cancel", "service-unavailable")
                case policy.Bounce(condition=condition, error_type=error_type):
                    self.bounce(el, error_type, condition)
                case policy.Drop():
                    pass
        return pending

    def _to_host(self, event: StanzaEvent) -> Any:
        el = event.stanza
        type_ = el.attrs.get("type")
        if el.name == "iq" and type_ in ("result", "error"):
            return True
        if el.name == "message" and type_ in ("error", "headline", "groupchat"):
            return True
        self.bounce(el, "cancel", "service-unavailable")
        return True

    def _presence_full(self, event: StanzaEvent) -> Any:
        assert event.to is not None
        session = self.session_at(event.to)
        if session is not None:
            self.deliver(session, event.stanza)
        return True

    def _iq_full(self, event: StanzaEvent) -> Any:
        assert event.to is not None
        session = self.session_at(event.to)
        if session is not None:
            self.deliver(session, event.stanza)
        elif event.stanza.attrs.get("type") in ("get", "set"):
            self.bounce(event.stanza, "cancel", "service-unavailable")
        return True


def _drop(event: StanzaEvent) -> bool:
    return True


def carbon_copy(el: Element, to: JID, direction: str) -> Element:
    """XEP-0280 wrapper: <message from=bare to=full><received|sent><forwarded>el</forwarded>..."""
    return carbon_wrapper(carbon_payload(el, direction), to, el)


def carbon_payload(el: Element, direction: str) -> Element:
    """``<received|sent xmlns=carbons><forwarded xmlns=forward>el</forwarded></…>``; shared by all the
    copies of one stanza (elements handed to the router are immutable)."""
    payload = Element(direction, ns.CARBONS)
    payload.add("forwarded", ns.FORWARD).append(_in_client_ns(el))
    return payload


def carbon_wrapper(payload: Element, to: JID, el: Element) -> Element:
    """The wrapping message for the session ``to``: from its bare JID, same type as ``el``."""
    return Element("message", ns.CLIENT, {
        "from": str(to.bare), "to": str(to), "type": el.attrs.get("type", "normal")}, [payload])


_OTHER_STANZA_NS = frozenset({ns.SERVER, ns.COMPONENT})


def _in_client_ns(el: Element) -> Element:
    # The forwarded message must be a jabber:client <message/> (XEP-0297), serialised with its own
    # xmlns inside <forwarded/>. A parsed client stanza already is; a hand-built one (ns None
    # would inherit the forward namespace) or one from a component or server is copied into it.
    if el.ns == ns.CLIENT:
        return el
    return _renamespace(el, top=True)


def _renamespace(el: Element, *, top: bool = False) -> Element:
    el_ns = ns.CLIENT if el.ns in _OTHER_STANZA_NS or (top and el.ns is None) else el.ns
    return Element(el.name, el_ns, dict(el.attrs),
                   [c if isinstance(c, str) else _renamespace(c) for c in el.children])
