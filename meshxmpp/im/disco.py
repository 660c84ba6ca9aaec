"""Service discovery (XEP-0030) for the server and, on their behalf, for its accounts.

The feature list is built from what is registered: ``disco#info`` fires ``disco-features/host``
(or ``disco-features/account``) with a ``set[str]`` that every feature module's handler adds its
features to (handlers return None, so all of them run); ``disco#items`` fires ``disco-items/host``
with a ``list[tuple[str, str | None]]`` of (jid, name).

Hooks (priority 0): ``iq-get/host/…disco#info``, ``iq-get/host/…disco#items``, the same for
``self`` (the user's own account) and ``bare`` (another account: answered only to the account
itself and to contacts with a presence subscription, else ``service-unavailable``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from meshxmpp.im._stanzas import answer
from meshxmpp.xml import ns
from meshxmpp.xml.element import Element

if TYPE_CHECKING:
    from meshxmpp.context import NodeContext
    from meshxmpp.hub import Hub
    from meshxmpp.jid import JID
    from meshxmpp.routing.router import StanzaEvent

SERVER_NAME = "meshxmpp"


def info_result(event: StanzaEvent, identity: dict[str, str], features: set[str]) -> Element:
    reply = event.stanza.reply()
    query = reply.add("query", ns.DISCO_INFO)
    query.add("identity", ns.DISCO_INFO, identity)
    for var in sorted(features):
        query.add("feature", ns.DISCO_INFO, {"var": var})
    return reply


def items_result(event: StanzaEvent, items: list[tuple[str, str | None]]) -> Element:
    reply = event.stanza.reply()
    query = reply.add("query", ns.DISCO_ITEMS)
    for jid, name in items:
        attrs = {"jid": jid}
        if name:
            attrs["name"] = name
        query.add("item", ns.DISCO_ITEMS, attrs)
    return reply


def _node(event: StanzaEvent, query_ns: str) -> str | None:
    query = event.stanza.find("query", query_ns)
    return query.get("node") if query is not None else None


class Disco:
    def __init__(self, hub: Hub, ctx: NodeContext) -> None:
        self.hub = hub
        self.ctx = ctx

    def collect_features(self, scope: str) -> set[str]:
        found = {ns.DISCO_INFO, ns.DISCO_ITEMS} if scope == "host" else {ns.DISCO_INFO}
        self.hub.fire(f"disco-features/{scope}", found)
        return found

    def collect_items(self, scope: str) -> list[tuple[str, str | None]]:
        found: list[tuple[str, str | None]] = []
        self.hub.fire(f"disco-items/{scope}", found)
        return found

    # the server ------------------------------------------------------------------------------

    def host_info(self, event: StanzaEvent) -> Any:
        if _node(event, ns.DISCO_INFO):
            return answer(self.ctx, event, event.stanza.error_reply("cancel", "item-not-found"))
        identity = {"category": "server", "type": "im", "name": SERVER_NAME}
        return answer(self.ctx, event, info_result(event, identity, self.collect_features("host")))

    def host_items(self, event: StanzaEvent) -> Any:
        if _node(event, ns.DISCO_ITEMS):
            return answer(self.ctx, event, event.stanza.error_reply("cancel", "item-not-found"))
        return answer(self.ctx, event, items_result(event, self.collect_items("host")))

    # accounts --------------------------------------------------------------------------------

    def self_info(self, event: StanzaEvent) -> Any:
        return answer(self.ctx, event, self._account_info(event))

    def self_items(self, event: StanzaEvent) -> Any:
        return answer(self.ctx, event, items_result(event, self.collect_items("account")))

    def bare_info(self, event: StanzaEvent) -> Any:
        return self._bare(event, self._account_info)

    def bare_items(self, event: StanzaEvent) -> Any:
        return self._bare(event, lambda e: items_result(e, self.collect_items("account")))

    def _account_info(self, event: StanzaEvent) -> Element:
        if _node(event, ns.DISCO_INFO):
            return event.stanza.error_reply("cancel", "item-not-found")
        identity = {"category": "account", "type": "registered"}
        return info_result(event, identity, self.collect_features("account"))

    def _bare(self, event: StanzaEvent, build: Any) -> Any:
        assert event.to is not None
        return self._bare_async(event, event.to.bare, build)

    async def _bare_async(self, event: StanzaEvent, user: JID, build: Any) -> None:
        if await self._may_discover(user, event.sender):
            reply = build(event)
        else:
            # Nothing about an account leaks to strangers, not even whether it exists.
            reply = event.stanza.error_reply("cancel", "service-unavailable")
        result = answer(self.ctx, event, reply)
        if result is not True:
            await result

    async def _may_discover(self, user: JID, sender: JID) -> bool:
        if sender.bare == user:
            return True
        if not await self.ctx.storage.accounts.exists(str(user)):
            return False
        item = await self.ctx.storage.rosters.get(str(user), str(sender.bare))
        return item is not None and item.subscription in ("from", "both")


def register(hub: Hub, ctx: NodeContext) -> Disco:
    disco = Disco(hub, ctx)
    hub.hook(f"iq-get/host/{ns.DISCO_INFO}", disco.host_info)
    hub.hook(f"iq-get/host/{ns.DISCO_ITEMS}", disco.host_items)
    hub.hook(f"iq-get/self/{ns.DISCO_INFO}", disco.self_info)
    hub.hook(f"iq-get/self/{ns.DISCO_ITEMS}", disco.self_items)
    hub.hook(f"iq-get/bare/{ns.DISCO_INFO}", disco.bare_info)
    hub.hook(f"iq-get/bare/{ns.DISCO_ITEMS}", disco.bare_items)
    return disco
