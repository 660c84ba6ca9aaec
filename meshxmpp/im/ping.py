"""XMPP Ping (XEP-0199): the server answers pings sent to it (to=domain, or with no 'to').

Hooks (priority 0): ``iq-get/host/urn:xmpp:ping``, ``iq-get/self/urn:xmpp:ping``,
``disco-features/host``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from meshxmpp.im._stanzas import answer
from meshxmpp.xml import ns

if TYPE_CHECKING:
    from meshxmpp.context import NodeContext
    from meshxmpp.hub import Hub
    from meshxmpp.routing.router import StanzaEvent


def register(hub: Hub, ctx: NodeContext) -> None:
    def pong(event: StanzaEvent) -> Any:
        return answer(ctx, event, event.stanza.reply())

    def features(found: set[str]) -> None:
        found.add(ns.PING)

    hub.hook(f"iq-get/host/{ns.PING}", pong)
    hub.hook(f"iq-get/self/{ns.PING}", pong)
    hub.hook("disco-features/host", features)
