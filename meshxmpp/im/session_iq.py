"""The legacy session iq (RFC 3921 section 3; a no-op since RFC 6121): answered with a result,
because older clients wait for it before sending anything else.

Hooks (priority 0): ``iq-set/self/urn:ietf:params:xml:ns:xmpp-session`` and the same on ``host``
(some clients address it to the domain).
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
    def handle(event: StanzaEvent) -> Any:
        return answer(ctx, event, event.stanza.reply())

    hub.hook(f"iq-set/self/{ns.SESSION}", handle)
    hub.hook(f"iq-set/host/{ns.SESSION}", handle)
