"""Instant messaging and presence (RFC 6121) and the server's own iq features.

Each module's whole surface is ``register(hub, ctx)``; ``register_all`` registers every one.
Events the modules add for each other: ``presence/initial`` (``fire_all``, payload Session, after
a session's first available presence), ``disco-features/{host,account}`` (payload ``set[str]``)
and ``disco-items/{host,account}`` (payload ``list[tuple[jid, name]]``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from meshxmpp.context import NodeContext
    from meshxmpp.hub import Hub

__all__ = ["register_all"]


def register_all(hub: Hub, ctx: NodeContext) -> None:
    # Imported here so that ``meshxmpp.im.subscription``, a pure table, imports nothing else.
    from meshxmpp.im import carbons, disco, offline, ping, presence, roster, session_iq, version

    roster.register(hub, ctx)
    presence.register(hub, ctx)
    offline.register(hub, ctx)
    disco.register(hub, ctx)
    ping.register(hub, ctx)
    version.register(hub, ctx)
    session_iq.register(hub, ctx)
    carbons.register(hub, ctx)
    # Multi-user chat (XEP-0045) when [muc] domain is set; it hooks the router's {kind}/remote events.
    from meshxmpp.muc import service as muc

    muc.register(hub, ctx)
