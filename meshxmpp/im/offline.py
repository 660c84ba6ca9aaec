"""Offline messages (XEP-0160) with a delay stamp (XEP-0203).

``message/offline`` (fired by the router when the routing policy says "store"): a chat or
normal message for an existing user is stored with ``<delay from=domain stamp=…/>`` added, up to
``offline.max_per_user`` per user; over the quota the sender gets ``service-unavailable``.
``presence/initial`` (fired by ``im.presence``): the first resource to come online with a
non-negative priority receives the stored messages, oldest first, and they are deleted.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from meshxmpp.im._stanzas import KeyedLocks, bounce, dumps, loads
from meshxmpp.xml import ns
from meshxmpp.xml.element import Element

if TYPE_CHECKING:
    from meshxmpp.c2s.session import Session
    from meshxmpp.context import NodeContext
    from meshxmpp.hub import Hub
    from meshxmpp.routing.router import StanzaEvent

log = logging.getLogger("meshxmpp.im.offline")

FEATURE = "msgoffline"
STORED_TYPES = frozenset({"chat", "normal"})


def stamp_text(when: float) -> str:
    """XEP-0082 DateTime in UTC with milliseconds: ``2024-05-01T12:00:00.250Z``."""
    return datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def with_delay(el: Element, domain: str, when: float) -> Element:
    out = el.copy()
    out.append(Element("delay", ns.DELAY, {"from": domain, "stamp": stamp_text(when)}))
    return out


class Offline:
    def __init__(self, ctx: NodeContext) -> None:
        self.ctx = ctx
        self.locks = KeyedLocks()

    def store(self, event: StanzaEvent) -> Any:
        type_ = event.stanza.get("type") or "normal"
        if type_ == "headline":
            return True  # RFC 6121 8.5.2.2.1: silently ignored
        if type_ not in STORED_TYPES or event.to is None:
            return None  # the router bounces it
        return self._store(event)

    async def _store(self, event: StanzaEvent) -> None:
        assert event.to is not None
        user = str(event.to.bare)
        if not await self.ctx.storage.accounts.exists(user):
            await bounce(self.ctx, event.stanza, "cancel", "service-unavailable")
            return
        when = self.ctx.now()
        stanza = with_delay(event.stanza, self.ctx.domain, when)
        limit = self.ctx.config.offline.max_per_user
        if not await self.ctx.storage.offline.store(user, dumps(stanza), stamp=when, limit=limit):
            log.info("offline quota (%d) reached for %s", limit, user)
            await bounce(self.ctx, event.stanza, "cancel", "service-unavailable", "Offline storage is full")

    async def deliver(self, session: Session) -> None:
        if session.priority < 0:
            return  # as Prosody: a negative-priority resource is not where messages go
        user = str(session.bare)
        # The lock makes two resources coming online together receive each message once.
        async with self.locks(user):
            messages = await self.ctx.storage.offline.fetch(user)
            if not messages or session.closed:
                return
            for message in messages:
                try:
                    el = loads(message.stanza)
                except ValueError:
                    log.warning("dropping unreadable offline message %d for %s", message.id, user)
                    continue
                self.ctx.router.deliver(session, el)
            await self.ctx.storage.offline.delete(user, [m.id for m in messages])

    @staticmethod
    def features(found: set[str]) -> None:
        found.add(FEATURE)


def register(hub: Hub, ctx: NodeContext) -> Offline:
    feature = Offline(ctx)
    hub.hook("message/offline", feature.store)
    hub.hook("presence/initial", feature.deliver)
    hub.hook("disco-features/host", feature.features)
    return feature
