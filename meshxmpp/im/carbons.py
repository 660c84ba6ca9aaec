"""Message Carbons (XEP-0280): a client turns carbons on or off for its session.

Who gets a copy is decided by the routing policy (``routing.policy.decide`` for ``<received/>``
copies, ``decide_sent_carbons`` for ``<sent/>`` ones) and carried out by the router; this module
only keeps ``session.carbons`` (through ``Router.set_carbons``, which also keeps the per-user count
that lets the router skip the sent-carbon work for users without carbons) and advertises the feature.

Hooks (priority 0): ``iq-set/self/urn:xmpp:carbons:2`` (``<enable/>`` / ``<disable/>``; repeating
either is answered with a result, XEP-0280 10.1), ``disco-features/host``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from meshxmpp.im._stanzas import answer
from meshxmpp.xml import ns
from meshxmpp.xml.element import Element

if TYPE_CHECKING:
    from meshxmpp.context import NodeContext
    from meshxmpp.hub import Hub
    from meshxmpp.routing.router import StanzaEvent

__all__ = ["register"]

_TOGGLES = {"enable": True, "disable": False}


def register(hub: Hub, ctx: NodeContext) -> None:
    def toggle(event: StanzaEvent) -> Any:
        el = event.stanza
        origin = event.origin
        if origin is None:
            # Only a client of this server may switch its own carbons (XEP-0280 4.1, 5.1).
            return answer(ctx, event, el.error_reply("cancel", "not-allowed"))
        # The router lets only an iq-set with exactly one child element through.
        child = next(c for c in el.children if isinstance(c, Element))
        enabled = _TOGGLES.get(child.name)
        if enabled is None:
            return answer(ctx, event, el.error_reply("modify", "bad-request"))
        ctx.router.set_carbons(origin, enabled)
        return answer(ctx, event, el.reply())

    def features(found: set[str]) -> None:
        found.add(ns.CARBONS)

    hub.hook(f"iq-set/self/{ns.CARBONS}", toggle)
    hub.hook("disco-features/host", features)
